package layerdb

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// errTreeChanged reports that a directory changed while it was being read;
// commit retries on it (see "Consistent commit" in the package doc).
var errTreeChanged = errors.New("the tree changed while it was read")

// fileKey identifies an inode within one layer, for hard links.
type fileKey struct {
	layer    int
	dev, ino uint64
}

// stamp is what must not change about an entry between reading it and the
// end of a snapshot for the snapshot to be consistent.
type stamp struct {
	ino, size, nlink uint64
	mode             uint32
	mtime, ctime     unix.Timespec
}

func stampOf(st *unix.Stat_t) stamp {
	return stamp{ino: st.Ino, size: uint64(st.Size), nlink: uint64(st.Nlink), mode: st.Mode, mtime: st.Mtim, ctime: st.Ctim}
}

// tarWriter writes tar entries from files reached through directory fds.
type tarWriter struct {
	tw    *tar.Writer
	links map[fileKey]string
	// stamps, when not nil, records each entry's state as it was read.
	stamps map[string]stamp
	// skip leaves out paths (relative, no leading slash).
	skip     func(p string) bool
	progress Progress
}

func newTarWriter(w io.Writer, progress Progress) *tarWriter {
	return &tarWriter{tw: tar.NewWriter(w), links: map[fileKey]string{}, progress: progress}
}

func (t *tarWriter) close() error { return t.tw.Close() }

// headerFor builds the tar header of dirfd/name from its lstat result.
func headerFor(dirfd int, name, path string, st *unix.Stat_t) (*tar.Header, error) {
	hdr := &tar.Header{
		Name:    path,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, path+"/"
	case unix.S_IFREG:
		hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
	case unix.S_IFLNK:
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return nil, fmt.Errorf("read symlink %q: %w", path, err)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, string(buf[:n])
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return nil, nil // sockets are not archived
	}
	return hdr, nil
}

// addXattrs copies the user-visible xattrs of fd into hdr's PAX records.
func addXattrs(fd int, hdr *tar.Header) error {
	size, err := unix.Flistxattr(fd, nil)
	if err != nil || size == 0 {
		return nil // no xattr support or none set
	}
	buf := make([]byte, size)
	size, err = unix.Flistxattr(fd, buf)
	if err != nil {
		return fmt.Errorf("list xattrs of %q: %w", hdr.Name, err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" || whiteout.IsPrivateXattr(name) {
			continue
		}
		vsize, err := unix.Fgetxattr(fd, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsize)
		vsize, err = unix.Fgetxattr(fd, name, val)
		if err != nil {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = string(val[:vsize])
	}
	return nil
}

// writeEntry writes one non-directory entry (dirfd/name at path) of layer
// number layer, as a hard link when its inode was written before.
func (t *tarWriter) writeEntry(layer, dirfd int, name, path string, st *unix.Stat_t) error {
	hdr, err := headerFor(dirfd, name, path, st)
	if err != nil || hdr == nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		key := fileKey{layer: layer, dev: st.Dev, ino: st.Ino}
		if first, ok := t.links[key]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			return t.writeHeader(hdr)
		}
		t.links[key] = path
	}
	if hdr.Typeflag != tar.TypeReg {
		return t.writeHeader(hdr)
	}
	fd, err := openNoatime(dirfd, name)
	if err != nil {
		return fmt.Errorf("open %q: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := addXattrs(fd, hdr); err != nil {
		return err
	}
	if err := t.writeHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(t.tw, io.TeeReader(io.LimitReader(f, hdr.Size), progressWriter{t.progress}))
	if err != nil {
		return fmt.Errorf("archive %q: %w", path, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("archive %q: %w (file shrank)", path, errTreeChanged)
	}
	return nil
}

func (t *tarWriter) writeHeader(hdr *tar.Header) error {
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write tar header %q: %w", hdr.Name, err)
	}
	return nil
}

func openNoatime(dirfd int, name string) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	return fd, err
}

func openDirAt(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

func joinRel(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "/" + name
}

func sortedNames(fd int) ([]string, error) {
	names, err := readDirNames(fd)
	sort.Strings(names)
	return names, err
}

// writeChangeSet writes the layer directory open as dirfd as an OCI
// change-set: overlay whiteouts become ".wh.NAME" entries, an opaque
// directory gets a ".wh..wh..opq" entry, OCI-form markers pass as they are.
func (t *tarWriter) writeChangeSet(dirfd int, prefix string) error {
	names, err := sortedNames(dirfd)
	if err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	for _, name := range names {
		path := joinRel(prefix, name)
		if t.skip != nil && t.skip(path) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("stat %q: %w", path, errTreeChanged)
			}
			return fmt.Errorf("stat %q: %w", path, err)
		}
		if t.stamps != nil {
			t.stamps[path] = stampOf(&st)
		}
		if whiteout.IsWhiteout(dirfd, name, &st) {
			err = t.writeHeader(&tar.Header{Name: joinRel(prefix, whiteout.OCIName(name)), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(st.Mtim.Unix())})
		} else if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = t.writeChangeSetDir(dirfd, name, path, &st)
		} else {
			err = t.writeEntry(0, dirfd, name, path, &st)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (t *tarWriter) writeChangeSetDir(dirfd int, name, path string, st *unix.Stat_t) error {
	fd, err := openDirAt(dirfd, name)
	if err != nil {
		return fmt.Errorf("open %q: %w", path, err)
	}
	defer unix.Close(fd)
	hdr, err := headerFor(dirfd, name, path, st)
	if err != nil {
		return err
	}
	if err := addXattrs(fd, hdr); err != nil {
		return err
	}
	if err := t.writeHeader(hdr); err != nil {
		return err
	}
	if whiteout.IsOpaque(fd) {
		err := t.writeHeader(&tar.Header{Name: path + "/" + whiteout.OCIOpaque, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: hdr.ModTime})
		if err != nil {
			return err
		}
	}
	return t.writeChangeSet(fd, path)
}

// restamp compares the recorded stamps with the tree's state now; any
// difference means the snapshot is not consistent.
func restamp(rootfd int, stamps map[string]stamp) error {
	for path, want := range stamps {
		var st unix.Stat_t
		err := unix.Fstatat(rootfd, path, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err != nil || stampOf(&st) != want {
			return fmt.Errorf("%q: %w", path, errTreeChanged)
		}
	}
	return nil
}

// progressWriter counts bytes into a Progress (nil is silent).
type progressWriter struct{ p Progress }

func (w progressWriter) Write(b []byte) (int, error) {
	if w.p != nil {
		w.p.Add(int64(len(b)))
	}
	return len(b), nil
}

// Progress receives the progress of long work. The CLI draws it as a bar on
// a terminal; nil means silent.
type Progress interface {
	// Start begins a phase; total is in bytes, or -1 when unknown.
	Start(what string, total int64)
	Add(n int64)
	Finish()
}
