package layerdb

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// ErrHostileTar marks a layer tar entry that tries to reach outside the layer
// or is otherwise not a valid change-set entry.
var ErrHostileTar = errors.New("rejected layer tar entry")

// resolveBeneath is how every path from a tar is resolved: inside the layer
// root, through no symlink at all (a change-set never needs to write through
// one, and a symlink in a tar is attacker-chosen), never across a mount.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// extractor applies one OCI change-set tar to an empty layer directory. It
// never joins path strings onto the layer's location: it holds the layer
// root open and resolves every entry's parent with openat2 beneath it.
type extractor struct {
	root   int // the layer directory, O_DIRECTORY
	format whiteout.Format
	// asRoot: the process may chown and create device nodes.
	asRoot bool

	// payload records the paths that carried file data, so a second entry
	// for one of them (which save could not rebuild) is rejected.
	payload map[string]bool
	// dirs whose mode and times are set once all their entries are written.
	dirs []pendingDir

	// cached parent directory of the previous entry
	lastDir   string
	lastDirFd int

	files int64
	size  int64
}

type pendingDir struct {
	path string
	hdr  *tar.Header
}

func newExtractor(rootFd int, asRoot bool) *extractor {
	return &extractor{
		root:      rootFd,
		format:    layerFormat(asRoot),
		asRoot:    asRoot,
		payload:   map[string]bool{},
		lastDirFd: -1,
	}
}

// layerFormat is the whiteout form written into layer directories: overlay's
// native one (char 0/0, trusted.overlay.opaque) as root, OCI ".wh." files
// otherwise. Both are read by the union filesystem and by save/export.
func layerFormat(asRoot bool) whiteout.Format {
	if asRoot {
		return whiteout.FormatOverlay
	}
	return whiteout.FormatOCI
}

func (x *extractor) close() {
	if x.lastDirFd >= 0 {
		unix.Close(x.lastDirFd)
		x.lastDirFd = -1
	}
}

// extractAll reads tar entries until the end of the archive and applies them.
func (x *extractor) extractAll(tr *tar.Reader) error {
	defer x.close()
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer tar: %w", err)
		}
		if err := x.apply(hdr, tr); err != nil {
			return err
		}
	}
	return x.finishDirs()
}

// cleanEntryPath turns a tar entry name into a relative path of plain
// components. "" is the layer root. Absolute names and ".." components are
// rejected: a change-set names paths inside one directory tree.
func cleanEntryPath(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w %q: absolute path", ErrHostileTar, name)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w %q: NUL in name", ErrHostileTar, name)
	}
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("%w %q: \"..\" in path", ErrHostileTar, name)
		}
		if len(c) > unix.NAME_MAX {
			return "", fmt.Errorf("%w %q: name component longer than %d bytes", ErrHostileTar, name, unix.NAME_MAX)
		}
		parts = append(parts, c)
	}
	return strings.Join(parts, "/"), nil
}

func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

func (x *extractor) apply(hdr *tar.Header, r io.Reader) error {
	p, err := cleanEntryPath(hdr.Name)
	if err != nil {
		return err
	}
	if x.payload[p] {
		return fmt.Errorf("%w %q: the tar has a second entry for a file that already had data", ErrHostileTar, hdr.Name)
	}
	if p == "" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w %q: the layer root must be a directory", ErrHostileTar, hdr.Name)
		}
		x.dirs = append(x.dirs, pendingDir{path: "", hdr: hdr})
		return nil
	}
	dir, base := splitPath(p)
	parent, err := x.openParent(dir, hdr.Name)
	if err != nil {
		return err
	}
	if strings.HasPrefix(base, whiteout.OCIPrefix) {
		return x.applyWhiteout(parent, dir, base, hdr)
	}
	if hdr.Size > 0 && (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA) {
		x.payload[p] = true
	}
	if hdr.Typeflag != tar.TypeDir {
		x.files++
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.makeDir(parent, p, base, hdr)
	case tar.TypeReg, tar.TypeRegA:
		return x.makeFile(parent, base, hdr, r)
	case tar.TypeSymlink:
		return x.makeSymlink(parent, base, hdr)
	case tar.TypeLink:
		return x.makeHardlink(parent, base, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return x.makeNode(parent, base, hdr)
	}
	return fmt.Errorf("%w %q: unsupported tar entry type %q", ErrHostileTar, hdr.Name, hdr.Typeflag)
}

// openParent returns an fd for the directory dir of the layer, creating
// missing directories (tars may omit them). The fd belongs to the extractor.
func (x *extractor) openParent(dir, entry string) (int, error) {
	if x.lastDirFd >= 0 && x.lastDir == dir {
		return x.lastDirFd, nil
	}
	fd, err := x.ensureDir(dir, entry)
	if err != nil {
		return -1, err
	}
	if x.lastDirFd >= 0 {
		unix.Close(x.lastDirFd)
	}
	x.lastDir, x.lastDirFd = dir, fd
	return fd, nil
}

func (x *extractor) openBeneath(p string, flags uint64) (int, error) {
	if p == "" {
		p = "."
	}
	return unix.Openat2(x.root, p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC | unix.O_NOFOLLOW, Resolve: resolveBeneath})
}

func (x *extractor) ensureDir(dir, entry string) (int, error) {
	fd, err := x.openBeneath(dir, unix.O_RDONLY|unix.O_DIRECTORY)
	if err == nil {
		return fd, nil
	}
	switch {
	case errors.Is(err, unix.ENOENT):
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("%w %q: its parent %q is a symlink or not a directory, and entries are never written through symlinks", ErrHostileTar, entry, dir)
	default:
		return -1, fmt.Errorf("open directory %q: %w", dir, err)
	}
	pdir, base := splitPath(dir)
	pfd, err := x.ensureDir(pdir, entry)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("create directory %q: %w", dir, err)
	}
	fd, err = unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("%w %q: cannot open parent %q as a directory: %v", ErrHostileTar, entry, dir, err)
	}
	return fd, nil
}

// clearName removes whatever is at parent/name, so a later entry replaces an
// earlier one as tar extraction does. A directory is kept when keepDir.
func (x *extractor) clearName(parent int, name string, keepDir bool) error {
	var st unix.Stat_t
	err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %q: %w", name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if keepDir {
			return nil
		}
		return removeAllAt(parent, name)
	}
	if err := unix.Unlinkat(parent, name, 0); err != nil {
		return fmt.Errorf("replace %q: %w", name, err)
	}
	return nil
}

func (x *extractor) applyWhiteout(parent int, dir, base string, hdr *tar.Header) error {
	if hdr.Size > 0 {
		return fmt.Errorf("%w %q: a whiteout carries data", ErrHostileTar, hdr.Name)
	}
	if whiteout.IsOCIOpaque(base) {
		if err := whiteout.SetOpaque(parent, x.format); err != nil {
			return fmt.Errorf("mark %q opaque: %w", dir, err)
		}
		return nil
	}
	target, ok := whiteout.OCITarget(base)
	if !ok {
		return fmt.Errorf("%w %q: whiteout of an invalid name", ErrHostileTar, hdr.Name)
	}
	if err := x.clearName(parent, target, false); err != nil {
		return err
	}
	if x.format == whiteout.FormatOCI {
		x.clearName(parent, base, false)
	}
	if err := whiteout.Create(parent, target, x.format); err != nil {
		return fmt.Errorf("whiteout %q: %w", hdr.Name, err)
	}
	return nil
}

func (x *extractor) makeDir(parent int, p, base string, hdr *tar.Header) error {
	if err := x.clearName(parent, base, true); err != nil {
		return err
	}
	if err := unix.Mkdirat(parent, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create directory %q: %w", hdr.Name, err)
	}
	fd, err := unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %q: %w", hdr.Name, err)
	}
	defer unix.Close(fd)
	if err := x.setOwnerAndXattrs(fd, hdr); err != nil {
		return err
	}
	x.dirs = append(x.dirs, pendingDir{path: p, hdr: hdr})
	return nil
}

func (x *extractor) makeFile(parent int, base string, hdr *tar.Header, r io.Reader) error {
	if err := x.clearName(parent, base, false); err != nil {
		return err
	}
	fd, err := unix.Openat(parent, base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %q: %w", hdr.Name, err)
	}
	f := os.NewFile(uintptr(fd), hdr.Name)
	defer f.Close()
	n, err := io.Copy(f, r)
	if err != nil {
		return fmt.Errorf("write %q (%d of %d bytes): %w", hdr.Name, n, hdr.Size, err)
	}
	x.size += n
	if err := x.setOwnerAndXattrs(fd, hdr); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, tarMode(hdr)); err != nil {
		return fmt.Errorf("chmod %q: %w", hdr.Name, err)
	}
	return setTimes(parent, base, hdr)
}

func (x *extractor) makeSymlink(parent int, base string, hdr *tar.Header) error {
	if err := x.clearName(parent, base, false); err != nil {
		return err
	}
	// The target is stored, never followed: it is only text to us.
	if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
		return fmt.Errorf("create symlink %q: %w", hdr.Name, err)
	}
	if x.asRoot {
		if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %q: %w", hdr.Name, err)
		}
	}
	return setTimes(parent, base, hdr)
}

func (x *extractor) makeHardlink(parent int, base string, hdr *tar.Header) error {
	target, err := cleanEntryPath(hdr.Linkname)
	if err != nil || target == "" {
		return fmt.Errorf("%w %q: hard link to %q, outside the layer", ErrHostileTar, hdr.Name, hdr.Linkname)
	}
	tdir, tbase := splitPath(target)
	tfd, err := x.openBeneath(tdir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("%w %q: hard link target %q is not in this layer: %v", ErrHostileTar, hdr.Name, hdr.Linkname, err)
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("%w %q: hard link target %q is not in this layer: %v", ErrHostileTar, hdr.Name, hdr.Linkname, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w %q: hard link to directory %q", ErrHostileTar, hdr.Name, hdr.Linkname)
	}
	if err := x.clearName(parent, base, false); err != nil {
		return err
	}
	// flags 0: linkat does not follow a symlink target, it links the symlink.
	if err := unix.Linkat(tfd, tbase, parent, base, 0); err != nil {
		return fmt.Errorf("hard link %q to %q: %w", hdr.Name, hdr.Linkname, err)
	}
	return nil
}

func (x *extractor) makeNode(parent int, base string, hdr *tar.Header) error {
	mode := uint32(tarMode(hdr))
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	case tar.TypeFifo:
		mode |= unix.S_IFIFO
	}
	if hdr.Typeflag != tar.TypeFifo && !x.asRoot {
		return fmt.Errorf("%w %q: device node %d:%d needs root to import", ErrHostileTar, hdr.Name, hdr.Devmajor, hdr.Devminor)
	}
	if err := x.clearName(parent, base, false); err != nil {
		return err
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(parent, base, mode, int(dev)); err != nil {
		return fmt.Errorf("create node %q: %w", hdr.Name, err)
	}
	if x.asRoot {
		if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %q: %w", hdr.Name, err)
		}
		if err := unix.Fchmodat(parent, base, mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %q: %w", hdr.Name, err)
		}
	}
	return setTimes(parent, base, hdr)
}

// setOwnerAndXattrs applies owner (as root) and xattrs to an open file or
// directory. Overlay's private xattrs are dropped: a layer tar must not be
// able to forge whiteouts, opaque markers or redirects.
func (x *extractor) setOwnerAndXattrs(fd int, hdr *tar.Header) error {
	if x.asRoot {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown %q: %w", hdr.Name, err)
		}
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || whiteout.IsPrivateXattr(name) {
			continue
		}
		err := unix.Fsetxattr(fd, name, []byte(v), 0)
		if err != nil && !(errors.Is(err, unix.EPERM) && !x.asRoot) && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("set xattr %s on %q: %w", name, hdr.Name, err)
		}
	}
	return nil
}

// finishDirs sets directory modes and times last, deepest first, because
// creating entries inside a directory changes its mtime (and a 0555 mode
// would stop a non-root extractor from writing into it).
func (x *extractor) finishDirs() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		fd, err := x.openBeneath(d.path, unix.O_RDONLY|unix.O_DIRECTORY)
		if replacedDir(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reopen directory %q: %w", d.hdr.Name, err)
		}
		if d.path == "" {
			err = x.setOwnerAndXattrs(fd, d.hdr)
		}
		if err == nil {
			err = unix.Fchmod(fd, tarMode(d.hdr))
		}
		if err == nil {
			err = setTimes(fd, "", d.hdr)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("finish directory %q: %w", d.hdr.Name, err)
		}
	}
	return nil
}

// replacedDir reports whether reopening a directory failed because a later
// entry replaced it (a file, a symlink, a whiteout) or removed it, as tar
// extraction allows: then it has no mode or times of ours to set.
func replacedDir(err error) bool {
	return errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP)
}

// tarMode is the permission and set-id bits of an entry.
func tarMode(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o7777 }

// setTimes sets atime and mtime of dirfd/name (dirfd itself when name is
// empty) without following a symlink.
func setTimes(dirfd int, name string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" { // dirfd is a directory: "." is itself
		name, flags = ".", 0
	}
	if err := unix.UtimesNanoAt(dirfd, name, ts, flags); err != nil {
		return fmt.Errorf("set times of %q: %w", hdr.Name, err)
	}
	return nil
}

// removeAllAt removes dirfd/name and everything below it, through fds only.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q for removal: %w", name, err)
	}
	names, err := readDirNames(fd)
	for _, n := range names {
		if err == nil {
			err = removeAllAt(fd, n)
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("remove directory %q: %w", name, err)
	}
	return nil
}

// readDirNames lists a directory open as fd (without "." and ".."). The fd
// stays open and owned by the caller.
func readDirNames(fd int) ([]string, error) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen directory: %w", err)
	}
	f := os.NewFile(uintptr(dfd), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read directory: %w", err)
	}
	return names, nil
}
