package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// A layer spec is a list of entries, applied in order to an empty
// directory. A stack is a list of layers, TOPMOST FIRST (the order of
// --lower and of overlay's lowerdir=).
//
//	layer{
//		dir("etc", mode(0o750)),
//		file("etc/passwd", "root:x:0:0\n", owner(0, 42), xattr("user.k", "v")),
//		hardlink("etc/passwd.hl", "etc/passwd"),
//		sparse("big", 8<<20, map[int64]string{4 << 20: "middle"}),
//		whiteoutEntry("gone", wfOCI),
//		opaqueDir("var", ofTrustedXattr),
//	}
type layer []entry

type entryKind int

const (
	kindFile entryKind = iota
	kindDir
	kindSymlink
	kindHardlink
	kindFifo
	kindCharDev
	kindBlockDev
	kindSocket
	kindWhiteout
	kindOpaque
)

// whiteoutFormat is one of the on-disk ways of recording a deleted name.
type whiteoutFormat int

const (
	wfCharDev      whiteoutFormat = iota // overlay: char device 0/0
	wfOCI                                // OCI: a ".wh.NAME" file
	wfTrustedXattr                       // zero-size file with trusted.overlay.whiteout
	wfUserXattr                          // zero-size file with user.overlay.whiteout
)

var allWhiteoutFormats = []whiteoutFormat{wfCharDev, wfOCI, wfTrustedXattr, wfUserXattr}

func (f whiteoutFormat) String() string {
	return [...]string{"chardev", "oci", "trusted-xattr", "user-xattr"}[f]
}

// opaqueFormat is one of the on-disk ways of marking a directory opaque.
type opaqueFormat int

const (
	ofTrustedXattr opaqueFormat = iota // trusted.overlay.opaque=y
	ofUserXattr                        // user.overlay.opaque=y
	ofOCI                              // a ".wh..wh..opq" entry
)

var allOpaqueFormats = []opaqueFormat{ofTrustedXattr, ofUserXattr, ofOCI}

func (f opaqueFormat) String() string {
	return [...]string{"trusted-xattr", "user-xattr", "oci"}[f]
}

type xattrPair struct{ name, value string }

// entry is one thing in a layer. Fields not meaningful for a kind are zero.
type entry struct {
	path    string
	kind    entryKind
	content string
	// extents, for a sparse file: data written at offsets, the rest holes.
	extents map[int64]string
	size    int64 // sparse file size
	mode    uint32
	hasMode bool
	uid     int
	gid     int
	xattrs  []xattrPair
	mtime   *unix.Timespec
	target  string // symlink target, or the existing path a hard link names
	major   uint32
	minor   uint32
	wf      whiteoutFormat
	of      opaqueFormat
}

// entryOption adjusts an entry: mode, owner, xattr, mtime.
type entryOption func(*entry)

func mode(m uint32) entryOption { return func(e *entry) { e.mode, e.hasMode = m, true } }

func owner(uid, gid int) entryOption { return func(e *entry) { e.uid, e.gid = uid, gid } }

func xattr(name, value string) entryOption {
	return func(e *entry) { e.xattrs = append(e.xattrs, xattrPair{name, value}) }
}

func mtime(sec, nsec int64) entryOption {
	return func(e *entry) { e.mtime = &unix.Timespec{Sec: sec, Nsec: nsec} }
}

func newEntry(path string, k entryKind, opts []entryOption) entry {
	e := entry{path: path, kind: k}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func file(path, content string, opts ...entryOption) entry {
	e := newEntry(path, kindFile, opts)
	e.content = content
	return e
}

// sparse is a file of the given size with data only at the extents.
func sparse(path string, size int64, extents map[int64]string, opts ...entryOption) entry {
	e := newEntry(path, kindFile, opts)
	e.size, e.extents = size, extents
	return e
}

func dir(path string, opts ...entryOption) entry { return newEntry(path, kindDir, opts) }

func symlink(path, target string, opts ...entryOption) entry {
	e := newEntry(path, kindSymlink, opts)
	e.target = target
	return e
}

// hardlink adds path as another name for existing, which must be earlier
// in the same layer.
func hardlink(path, existing string) entry {
	e := newEntry(path, kindHardlink, nil)
	e.target = existing
	return e
}

func fifo(path string, opts ...entryOption) entry { return newEntry(path, kindFifo, opts) }

func socketNode(path string, opts ...entryOption) entry { return newEntry(path, kindSocket, opts) }

func charDev(path string, major, minor uint32, opts ...entryOption) entry {
	e := newEntry(path, kindCharDev, opts)
	e.major, e.minor = major, minor
	return e
}

func blockDev(path string, major, minor uint32, opts ...entryOption) entry {
	e := newEntry(path, kindBlockDev, opts)
	e.major, e.minor = major, minor
	return e
}

// whiteoutEntry hides path of the layers below, written in format f.
func whiteoutEntry(path string, f whiteoutFormat) entry {
	e := newEntry(path, kindWhiteout, nil)
	e.wf = f
	return e
}

// opaqueDir creates the directory path (if needed) and marks it opaque in
// format f, hiding everything the layers below have under it.
func opaqueDir(path string, f opaqueFormat, opts ...entryOption) entry {
	e := newEntry(path, kindOpaque, opts)
	e.of = f
	return e
}

// defaultTime is the mtime (and atime) of everything a layer spec does not
// time explicitly; a fixed value, so copy-up keeping times is visible.
var defaultTime = unix.Timespec{Sec: 1600000000, Nsec: 123456789}

// buildLayer writes l into the empty or missing directory root.
func buildLayer(root string, l layer) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	times := map[string]unix.Timespec{".": defaultTime}
	for _, e := range l {
		if err := ensureParents(root, e.path, times); err != nil {
			return err
		}
		if err := writeEntry(root, e); err != nil {
			return fmt.Errorf("layer entry %q: %w", e.path, err)
		}
		if e.kind == kindHardlink {
			continue
		}
		if e.mtime != nil {
			times[e.path] = *e.mtime
		} else {
			times[e.path] = defaultTime
		}
	}
	return applyTimes(root, times)
}

// ensureParents creates the missing parent directories of rel (mode 0755,
// default time).
func ensureParents(root, rel string, times map[string]unix.Timespec) error {
	parts := strings.Split(filepath.Dir(rel), "/")
	cur := ""
	for _, p := range parts {
		if p == "." || p == "" {
			continue
		}
		cur = filepath.Join(cur, p)
		err := unix.Mkdir(filepath.Join(root, cur), 0o755)
		if err == nil {
			times[cur] = defaultTime
		} else if err != unix.EEXIST {
			return fmt.Errorf("mkdir %s: %w", cur, err)
		}
	}
	return nil
}

func writeEntry(root string, e entry) error {
	p := filepath.Join(root, e.path)
	var err error
	switch e.kind {
	case kindFile:
		err = writeFileEntry(p, e)
	case kindDir:
		err = mkdirIfMissing(p)
	case kindSymlink:
		err = unix.Symlink(e.target, p)
	case kindHardlink:
		return unix.Link(filepath.Join(root, e.target), p)
	case kindFifo:
		err = unix.Mknod(p, unix.S_IFIFO|0o644, 0)
	case kindSocket:
		err = unix.Mknod(p, unix.S_IFSOCK|0o755, 0)
	case kindCharDev:
		err = unix.Mknod(p, unix.S_IFCHR|0o644, int(unix.Mkdev(e.major, e.minor)))
	case kindBlockDev:
		err = unix.Mknod(p, unix.S_IFBLK|0o644, int(unix.Mkdev(e.major, e.minor)))
	case kindWhiteout:
		return writeWhiteout(root, e.path, e.wf)
	case kindOpaque:
		if err = mkdirIfMissing(p); err == nil {
			err = markOpaque(p, e.of)
		}
	}
	if err != nil {
		return err
	}
	return applyMetadata(p, e)
}

func mkdirIfMissing(p string) error {
	if err := unix.Mkdir(p, 0o755); err != nil && err != unix.EEXIST {
		return err
	}
	return nil
}

func writeFileEntry(p string, e entry) error {
	fd, err := unix.Open(p, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if e.extents != nil {
		if err := unix.Ftruncate(fd, e.size); err != nil {
			return err
		}
		for off, data := range e.extents {
			if _, err := unix.Pwrite(fd, []byte(data), off); err != nil {
				return err
			}
		}
		return nil
	}
	_, err = unix.Write(fd, []byte(e.content))
	return err
}

// applyMetadata sets owner, then mode (chown clears set-id bits), then
// xattrs. Times are set at the end of the layer, children before parents.
func applyMetadata(p string, e entry) error {
	if err := unix.Lchown(p, e.uid, e.gid); err != nil {
		return fmt.Errorf("lchown: %w", err)
	}
	if e.hasMode && e.kind != kindSymlink {
		if err := unix.Chmod(p, e.mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	for _, x := range e.xattrs {
		if err := unix.Lsetxattr(p, x.name, []byte(x.value), 0); err != nil {
			return fmt.Errorf("setxattr %s: %w", x.name, err)
		}
	}
	return nil
}

// applyTimes sets atime and mtime of every timed path, deepest first, so a
// child's creation does not move its parent's mtime afterwards.
func applyTimes(root string, times map[string]unix.Timespec) error {
	paths := make([]string, 0, len(times))
	for p := range times {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool {
		di, dj := strings.Count(paths[i], "/"), strings.Count(paths[j], "/")
		if di != dj {
			return di > dj
		}
		return paths[i] > paths[j]
	})
	for _, p := range paths {
		ts := times[p]
		full := filepath.Join(root, p)
		if _, err := os.Lstat(full); err != nil {
			continue // replaced by a whiteout of another format, etc.
		}
		err := unix.UtimesNanoAt(unix.AT_FDCWD, full, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
		if err != nil {
			return fmt.Errorf("utimens %s: %w", p, err)
		}
	}
	return nil
}

// writeWhiteout records the deletion of rel in format f. The xattr formats
// also mark the parent directory "opaque=x", which is how kernel overlayfs
// (6.7+) learns that a directory holds xattr whiteouts; the parent stays
// transparent.
func writeWhiteout(root, rel string, f whiteoutFormat) error {
	parent := filepath.Join(root, filepath.Dir(rel))
	name := filepath.Base(rel)
	switch f {
	case wfCharDev:
		return unix.Mknod(filepath.Join(parent, name), unix.S_IFCHR, 0)
	case wfOCI:
		return os.WriteFile(filepath.Join(parent, whiteout.OCIName(name)), nil, 0o644)
	case wfTrustedXattr, wfUserXattr:
		prefix := whiteout.XattrTrustedPrefix
		if f == wfUserXattr {
			prefix = whiteout.XattrUserPrefix
		}
		p := filepath.Join(parent, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
		if err := unix.Lsetxattr(p, prefix+"whiteout", nil, 0); err != nil {
			return err
		}
		if v, err := getxattrString(parent, prefix+"opaque"); err == nil && v == "y" {
			return nil
		}
		return unix.Lsetxattr(parent, prefix+"opaque", []byte("x"), 0)
	}
	return fmt.Errorf("whiteout format %d", f)
}

func markOpaque(dirPath string, f opaqueFormat) error {
	switch f {
	case ofTrustedXattr:
		return unix.Lsetxattr(dirPath, whiteout.XattrTrustedPrefix+"opaque", []byte("y"), 0)
	case ofUserXattr:
		return unix.Lsetxattr(dirPath, whiteout.XattrUserPrefix+"opaque", []byte("y"), 0)
	case ofOCI:
		return os.WriteFile(filepath.Join(dirPath, whiteout.OCIOpaque), nil, 0o644)
	}
	return fmt.Errorf("opaque format %d", f)
}

func getxattrString(p, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// buildStack writes each layer of stack into dir/L0, dir/L1, ... and
// returns their paths, topmost first.
func buildStack(dir string, stack []layer) ([]string, error) {
	var paths []string
	for i, l := range stack {
		p := filepath.Join(dir, fmt.Sprintf("L%d", i))
		if err := buildLayer(p, l); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}
