package fs

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// layer is one directory of the stack, reached only through rootFd.
type layer struct {
	path   string // absolute path, for messages only
	rootFd int    // O_PATH|O_DIRECTORY descriptor of the layer root
	dev    uint64 // st_dev of the root, for inode-number folding
	devIdx uint64 // small index of dev among the stack's filesystems
}

// resolveFlags confine every path lookup inside a layer: nothing in a layer
// (a symlink, "..", a magic link) may lead the daemon outside its root. Our
// relative paths are built only from directory names we listed, so a symlink
// anywhere along one means the tree changed under us; refusing it is right.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV

func openLayer(path string) (*layer, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", path, err)
	}
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOTDIR {
			return nil, fmt.Errorf("layer %s is not a directory: %w", abs, err)
		}
		return nil, fmt.Errorf("layer %s: %w", abs, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("layer %s: %w", abs, err)
	}
	return &layer{path: abs, rootFd: fd, dev: st.Dev}, nil
}

func (l *layer) close() {
	if l.rootFd >= 0 {
		unix.Close(l.rootFd)
		l.rootFd = -1
	}
}

// open resolves rel (a slash-separated path relative to the layer root; ""
// is the root) inside the layer with openat2 and the confinement flags.
func (l *layer) open(rel string, flags int, mode uint32) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: resolveFlags}
	if flags&unix.O_CREAT == 0 && flags&unix.O_TMPFILE != unix.O_TMPFILE {
		how.Mode = 0
	}
	for {
		fd, err := unix.Openat2(l.rootFd, rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
}

// openDir opens the directory rel of the layer as O_PATH.
func (l *layer) openDir(rel string) (int, error) {
	return l.open(rel, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
}

// splitRel returns the parent directory and the last name of rel.
func splitRel(rel string) (dir, name string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

// joinRel appends name to the relative directory path dir.
func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// assignDevIndexes numbers the distinct filesystems of the stack in stack
// order (upper first), so the same stack gives the same inode numbers on
// every mount.
func assignDevIndexes(layers []*layer) {
	seen := map[uint64]uint64{}
	for _, l := range layers {
		idx, ok := seen[l.dev]
		if !ok {
			idx = uint64(len(seen))
			seen[l.dev] = idx
		}
		l.devIdx = idx
	}
}

// inoBits is how many low bits of a backing inode number are kept when the
// filesystem index is folded in above them (overlayfs's xino does the same).
const inoBits = 56

// foldIno makes a mount-wide unique inode number from a backing one.
func (l *layer) foldIno(ino uint64) uint64 {
	if l.devIdx == 0 {
		return ino
	}
	return ino&(1<<inoBits-1) | l.devIdx<<inoBits
}

func procFdPath(fd int) string { return "/proc/self/fd/" + itoa(fd) }

func itoa(i int) string { return fmt.Sprint(i) }
