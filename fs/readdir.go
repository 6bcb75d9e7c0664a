package fs

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// dirHandle is a directory listing being read: a snapshot of the merged
// listing, ordered by cookie. An entry's offset (d_off, telldir) is its
// cookie, a hash of its name, not its position: a read that continues at
// offset N returns the entries whose cookie is above N, so a listing read
// in pieces, or resumed with seekdir, never repeats or skips a name that
// stayed, even when the directory changed in between and the piece comes
// from a newer snapshot (ext4 hands out hash cookies for the same reason).
type dirHandle struct {
	n *node
	// mu serializes the readers sharing the snapshot (dircursor.go).
	mu      sync.Mutex
	entries []fuse.DirEntry // sorted by Off
	pos     int
	// off is the offset the next read continues from without a seek.
	off uint64
	// filesWithAttrs: READDIRPLUS looks up files too, not only
	// directories (plus.go).
	filesWithAttrs bool
}

// Cookies of the two dot entries; every name's cookie is above them.
const (
	dotCookie    = 1
	dotDotCookie = 2
)

// nameCookie is the offset of name in its directory: 63 bits of its FNV-1a
// hash (the kernel's offsets are signed), kept clear of 0 (the start) and
// the dot entries. Two names with one cookie are possible in principle
// (about 2^-63 per pair); a piece boundary between them would skip the
// second.
func nameCookie(name string) uint64 {
	h := fnv.New64a()
	io.WriteString(h, name)
	c := h.Sum64() >> 1
	if c <= dotDotCookie {
		c += dotDotCookie + 1
	}
	return c
}

// openDirHandle takes a snapshot of the directory's listing.
func (n *node) openDirHandle() (*dirHandle, syscall.Errno) {
	if n.kind != unix.S_IFDIR {
		return nil, syscall.ENOTDIR
	}
	h := &dirHandle{n: n}
	if err := h.load(); err != nil {
		return nil, toErrno(err)
	}
	return h, 0
}

func (h *dirHandle) load() error {
	h.n.u.treeMu.RLock()
	defer h.n.u.treeMu.RUnlock()
	ents, err := h.n.mergedEntries(true)
	if err != nil {
		return err
	}
	parentIno := h.n.ino
	if p := h.n.parent; p != nil {
		parentIno = p.ino
	}
	for i := range ents {
		ents[i].Off = nameCookie(ents[i].Name)
	}
	slices.SortFunc(ents, func(a, b fuse.DirEntry) int { return cmp.Compare(a.Off, b.Off) })
	h.entries = append([]fuse.DirEntry{
		{Name: ".", Mode: unix.S_IFDIR, Ino: h.n.ino, Off: dotCookie},
		{Name: "..", Mode: unix.S_IFDIR, Ino: parentIno, Off: dotDotCookie},
	}, ents...)
	h.pos = 0
	h.decideAttrs(ents)
	return nil
}

// decideAttrs asks the READDIRPLUS policy whether this listing's files
// come with attributes, and tells it how many went bare.
func (h *dirHandle) decideAttrs(ents []fuse.DirEntry) {
	h.filesWithAttrs = h.n.u.plus.filesWithAttrs()
	h.n.mu.Lock()
	h.n.dir.listedBare = !h.filesWithAttrs
	h.n.mu.Unlock()
	if h.filesWithAttrs {
		return
	}
	files := 0
	for _, e := range ents {
		if e.Mode&unix.S_IFMT != unix.S_IFDIR {
			files++
		}
	}
	h.n.u.plus.listedBare(files)
}

// read fills out with the entries after cookie off; plus adds each
// entry's attributes and node (READDIRPLUS), as the policy in plus.go
// decides.
func (h *dirHandle) read(off uint64, out *fuse.DirEntryList, plus bool) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if off != h.off {
		if errno := h.seek(off); errno != 0 {
			return errno
		}
	}
	for h.pos < len(h.entries) {
		e := h.entries[h.pos]
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			h.pos++
			continue
		}
		entryOut := out.AddDirLookupEntry(e)
		if entryOut == nil {
			break
		}
		h.pos++
		if e.Name == "." || e.Name == ".." {
			// The kernel ignores what a dot entry carries.
			continue
		}
		if child, errno := h.lookup(e, entryOut); errno == 0 {
			fillEntry(child, entryOut)
			if e.Mode&unix.S_IFMT != child.kind {
				// The type changed since the snapshot.
				out.FixMode(child.kind)
			}
		}
		// Else node id 0: the name without attributes, which the
		// kernel looks up when it is used.
	}
	h.off = out.Offset
	return 0
}

// seek continues after cookie off; 0 is a rewind and takes a fresh
// snapshot, as rewinddir expects.
func (h *dirHandle) seek(off uint64) syscall.Errno {
	h.off = off
	if off == 0 {
		return toErrno(h.load())
	}
	h.pos = sort.Search(len(h.entries), func(i int) bool { return h.entries[i].Off > off })
	return 0
}

func (n *node) fsyncDir() syscall.Errno {
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.inUpper {
		return 0
	}
	fd, err := n.u.upper.open(n.upperRel(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return toErrno(err)
	}
	defer unix.Close(fd)
	return toErrno(unix.Fsync(fd))
}

// mergedEntries lists the directory as the view shows it: upper entries
// (whiteouts hidden), then lower entries not hidden by the upper layer.
// withIno fills in the inode numbers (d_ino must equal st_ino). Caller holds
// u.treeMu shared.
func (n *node) mergedEntries(withIno bool) ([]fuse.DirEntry, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ll, err := n.lowerListingLocked()
	if err != nil {
		return nil, err
	}
	var out []fuse.DirEntry
	shadowed := map[string]bool{}
	if n.inUpper {
		out, err = n.upperEntries(shadowed, withIno)
		if err != nil {
			return nil, err
		}
		if n.opaque() {
			return out, nil
		}
	}
	for i, name := range ll.names {
		if shadowed[name] {
			continue
		}
		e := &ll.ents[i]
		out = append(out, fuse.DirEntry{Name: name, Mode: e.mode(), Ino: n.u.lowers[e.layer()].foldIno(e.ino)})
	}
	return out, nil
}

// upperEntries reads the upper directory; every name it holds (whiteouts
// included) is added to shadowed.
func (n *node) upperEntries(shadowed map[string]bool, withIno bool) ([]fuse.DirEntry, error) {
	fd, err := n.u.upper.open(n.upperRel(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open upper dir: %w", err)
	}
	defer unix.Close(fd)
	var out []fuse.DirEntry
	ociFormat := n.u.wfmt == whiteout.FormatOCI
	err = readDirents(fd, func(name string, ino uint64, dtype uint8) error {
		if ociFormat {
			if whiteout.IsOCIOpaque(name) {
				return nil
			}
			if target, ok := whiteout.OCITarget(name); ok {
				shadowed[target] = true
				return nil
			}
		}
		shadowed[name] = true
		mode := dtypeToMode(dtype)
		if mode == unix.S_IFCHR {
			var st unix.Stat_t
			if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && whiteout.IsWhiteout(fd, name, &st) {
				return nil
			}
		}
		e := fuse.DirEntry{Name: name, Mode: mode, Ino: n.u.upper.foldIno(ino)}
		if withIno {
			e.Ino = n.upperEntryIno(fd, name, e.Ino)
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// upperEntryIno is the inode number the view shows for an upper entry: the
// one recorded at copy-up, if any.
func (n *node) upperEntryIno(dirfd int, name string, ino uint64) uint64 {
	if n.u.knownUpperIno(ino) {
		return ino
	}
	if v, ok := getxattrString(dirfd, name, n.u.xattrPrefix+"ino"); ok {
		if recorded, err := strconv.ParseUint(v, 10, 64); err == nil && recorded > 1 {
			return recorded
		}
	}
	return ino
}
