package fs

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// lowerRef names an object in a lower layer: the layer's index in
// union.lowers and the path relative to that layer's root. Lower layers never
// change, so a lowerRef stays valid for the life of the mount.
type lowerRef struct {
	layer int
	rel   string
}

// lowerEntry is one visible name of a merged lower directory. A listing
// keeps one per name for as long as the kernel holds the directory, so it
// is packed into 24 bytes.
type lowerEntry struct {
	ino uint64 // its backing inode number (d_ino), not yet folded
	// dirs lists, for a directory, every lower layer from the top one
	// down in which the same name is also a directory and not hidden by a
	// whiteout or a non-directory above it; nil for anything else.
	// Opacity of those child directories is checked when the child's own
	// listing is built.
	dirs *[]int
	top  uint16 // topmost lower layer holding the name (maxLowers)
	typ  uint16 // S_IFMT of that entry
	// noXattrs: the entry is known to carry no xattr at all (learnt by
	// the prefetcher), so its node can answer getxattr without asking.
	noXattrs bool
}

// maxLowers is the most lower layers a union may have: lowerEntry keeps
// a layer's index in 16 bits.
const maxLowers = 1 << 16

func (e *lowerEntry) layer() int   { return int(e.top) }
func (e *lowerEntry) mode() uint32 { return uint32(e.typ) }

// dirLayers is the list dirs points to, nil for a non-directory.
func (e *lowerEntry) dirLayers() []int {
	if e.dirs == nil {
		return nil
	}
	return *e.dirs
}

// lowerListing is the merge of one directory across the lower layers. It is
// built once per directory node (lower layers never change) and answers
// every lookup and readdir in that directory without a further syscall into
// the lowers: a missing name costs a map lookup whatever the stack depth.
//
// It is kept as two sorted parallel slices rather than a map: a directory
// the kernel holds keeps its listing for as long, and slices cost a third
// of a map's memory per name; a lookup is a binary search.
type lowerListing struct {
	names []string     // sorted visible names, the readdir order
	ents  []lowerEntry // ents[i] is names[i]'s entry

	// dirFds are descriptors of the merged lower directories, opened by
	// the lookups of their entries and kept for the next ones (a
	// READDIRPLUS looks up every entry), within the mount's budget of
	// cached directory descriptors (dirfd.go). Closed when the node is
	// forgotten. fdMu, a leaf lock, guards the slice; the owning node's
	// mu keeps a descriptor handed out open (closeDirFds needs it too),
	// and a child's stat uses one under fdMu alone (withLayerDirFd).
	fdMu   sync.Mutex
	dirFds []layerDirFd

	// top is the attributes of the topmost merged directory, read as
	// its scan ended (see dirAttr).
	top dirAttr
}

type layerDirFd struct{ layer, fd int }

// lowerDirFd returns a descriptor of the directory set's directory in
// layer li and whether the caller must close it (false: it is cached).
// Caller holds the owning node's mu.
func (ll *lowerListing) lowerDirFd(u *union, dirs lowerDirSet, li int) (int, bool, error) {
	ll.fdMu.Lock()
	defer ll.fdMu.Unlock()
	if fd, ok := ll.keptFdLocked(li); ok {
		return fd, false, nil
	}
	fd, err := u.lowers[li].openDir(dirs.rel)
	if err != nil {
		return -1, false, err
	}
	if u.dirFds.Add(1) > maxDirFds {
		u.dirFds.Add(-1)
		return fd, true, nil
	}
	ll.dirFds = append(ll.dirFds, layerDirFd{layer: li, fd: fd})
	return fd, false, nil
}

// withLayerDirFd calls fn with the kept descriptor of the lower directory
// in layer li, under fdMu, and reports whether one is kept. fn must only
// make system calls on it.
func (ll *lowerListing) withLayerDirFd(li int, fn func(fd int)) bool {
	ll.fdMu.Lock()
	defer ll.fdMu.Unlock()
	fd, ok := ll.keptFdLocked(li)
	if ok {
		fn(fd)
	}
	return ok
}

// keptFdLocked returns the kept descriptor of layer li's directory.
// Caller holds fdMu.
func (ll *lowerListing) keptFdLocked(li int) (int, bool) {
	for _, c := range ll.dirFds {
		if c.layer == li {
			return c.fd, true
		}
	}
	return -1, false
}

// closeDirFds closes the cached descriptors. Caller holds the owning
// node's mu.
func (ll *lowerListing) closeDirFds(u *union) {
	ll.fdMu.Lock()
	defer ll.fdMu.Unlock()
	for _, c := range ll.dirFds {
		unix.Close(c.fd)
		u.dirFds.Add(-1)
	}
	ll.dirFds = nil
}

// entry returns name's entry, nil if no lower layer shows name.
func (ll *lowerListing) entry(name string) *lowerEntry {
	i, found := slices.BinarySearch(ll.names, name)
	if !found {
		return nil
	}
	return &ll.ents[i]
}

// size is the number of names listed.
func (ll *lowerListing) size() int { return len(ll.names) }

// namedEntry is an entry with its name, while a merge is being built
// (dirLayers as lowerEntry.dirs).
type namedEntry struct {
	name      string
	layer     int
	mode      uint32
	ino       uint64
	dirLayers []int
}

// packed is the entry as a listing keeps it.
func (e *namedEntry) packed() lowerEntry {
	p := lowerEntry{ino: e.ino, top: uint16(e.layer), typ: uint16(e.mode)}
	if layers := openMerge(e.dirLayers); layers != nil {
		p.dirs = &layers
	}
	return p
}

// layerScan is what one layer's directory contributes.
type layerScan struct {
	entries   []namedEntry // in the directory's own order
	whiteouts []string
	opaque    bool
	// st is the directory's own attributes after it was read, for the
	// top of the set only (withStat).
	st *unix.Stat_t
}

// lowerDirSet is where a directory's lower content lives: the same relative
// path rel in each of the lower layers listed, top first. Without a rename
// rel is the directory's own path; a renamed directory keeps the rel of the
// place it came from (overlayfs's redirect).
type lowerDirSet struct {
	rel    string
	layers []int
}

func (s lowerDirSet) empty() bool { return len(s.layers) == 0 }

// child is the set for the entry name, merged over the given layers.
func (s lowerDirSet) child(name string, layers []int) lowerDirSet {
	return lowerDirSet{rel: joinRel(s.rel, name), layers: layers}
}

// buildLowerListing merges the directory set dirs. Each layer directory is
// read once. A layer whose directory is opaque ends the merge after itself;
// the layers actually merged are returned.
func (u *union) buildLowerListing(dirs lowerDirSet) (*lowerListing, []int, error) {
	scans := u.scanLowerDirs(dirs)
	total := 0
	for _, r := range scans {
		if r.scan != nil {
			total += len(r.scan.entries)
		}
	}
	// merged holds the visible entries in the order first seen; index
	// finds a name's place in it.
	merged := make([]namedEntry, 0, total)
	index := make(map[string]int, total)
	var hidden map[string]bool
	var used []int
	for i, li := range dirs.layers {
		scan, err := scans[i].scan, scans[i].err
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			// A redirect may name a path some layers do not have.
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		used = append(used, li)
		for _, e := range scan.entries {
			if hidden[e.name] {
				continue
			}
			if j, ok := index[e.name]; ok {
				// A name decided above: a lower directory of the same
				// name merges into it only if the upper one is a
				// directory that is still open to merging.
				prev := &merged[j]
				if prev.mode == unix.S_IFDIR && e.mode == unix.S_IFDIR && !mergeClosed(prev.dirLayers) {
					prev.dirLayers = append(prev.dirLayers, li)
				} else if prev.mode == unix.S_IFDIR {
					prev.dirLayers = closeMerge(prev.dirLayers)
				}
				continue
			}
			if e.mode == unix.S_IFDIR {
				e.dirLayers = []int{li}
			}
			index[e.name] = len(merged)
			merged = append(merged, e)
		}
		for _, name := range scan.whiteouts {
			if j, ok := index[name]; ok {
				if prev := &merged[j]; prev.layer != li && prev.mode == unix.S_IFDIR {
					prev.dirLayers = closeMerge(prev.dirLayers)
				}
				continue
			}
			if hidden == nil {
				hidden = map[string]bool{}
			}
			hidden[name] = true
		}
		if scan.opaque {
			break
		}
	}
	ll := sortedListing(merged)
	if len(used) > 0 && used[0] == dirs.layers[0] && scans[0].scan.st != nil {
		ll.top = newDirAttr(used[0], scans[0].scan.st)
	}
	return ll, used, nil
}

// sortedListing turns a merge into the kept form. It sorts small
// (name, place) pairs rather than the entries themselves: fewer bytes move.
func sortedListing(merged []namedEntry) *lowerListing {
	type sortKey struct {
		name  string
		place int
	}
	keys := make([]sortKey, len(merged))
	for i := range merged {
		keys[i] = sortKey{merged[i].name, i}
	}
	slices.SortFunc(keys, func(a, b sortKey) int { return strings.Compare(a.name, b.name) })
	ll := &lowerListing{names: make([]string, len(merged)), ents: make([]lowerEntry, len(merged))}
	for i, k := range keys {
		ll.names[i] = k.name
		ll.ents[i] = merged[k.place].packed()
	}
	return ll
}

// A merge list is "closed" (no more layers may join) by marking it with a
// negative sentinel; openMerge strips the sentinel when the merge is done.
func closeMerge(l []int) []int {
	if len(l) > 0 && l[len(l)-1] < 0 {
		return l
	}
	return append(l, -1)
}

func mergeClosed(l []int) bool { return len(l) > 0 && l[len(l)-1] < 0 }

func openMerge(l []int) []int {
	if len(l) > 0 && l[len(l)-1] < 0 {
		return l[:len(l)-1]
	}
	return l
}

// scanParallelism bounds how many layer directories of one merge are read
// at once. Cold, each read waits on the disk for the directory's inode and
// blocks; with many in flight the disk serves them together, so the first
// lookup in a directory of a deep stack does not wait for its layers one
// after the other.
const scanParallelism = 16

// scanResult is one layer directory's scan, or why it failed.
type scanResult struct {
	scan *layerScan
	err  error
}

// scanLowerDirs reads the directory of each layer of dirs, up to
// scanParallelism at a time, and returns the scans in stack order. Once a
// directory is found opaque the layers below it are not read (their slots
// stay empty: the merge stops at the opaque one before reaching them).
func (u *union) scanLowerDirs(dirs lowerDirSet) []scanResult {
	results := make([]scanResult, len(dirs.layers))
	scanAt := func(i int) bool {
		scan, err := u.scanLowerDir(lowerRef{layer: dirs.layers[i], rel: dirs.rel}, i == 0)
		results[i] = scanResult{scan, err}
		return err == nil && scan.opaque
	}
	workers := min(scanParallelism, len(dirs.layers))
	if workers <= 1 {
		for i := range dirs.layers {
			if scanAt(i) {
				break
			}
		}
		return results
	}
	// next hands out positions top down; opaqueAt is the highest position
	// found opaque so far, and nothing below it needs reading.
	var next, opaqueAt atomic.Int64
	opaqueAt.Store(math.MaxInt64)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(dirs.layers)) || i > opaqueAt.Load() {
					return
				}
				if scanAt(int(i)) {
					raiseOpaqueMark(&opaqueAt, i)
				}
			}
		}()
	}
	wg.Wait()
	return results
}

// raiseOpaqueMark moves the mark *at up the stack to position i, unless
// it is already at or above i.
func raiseOpaqueMark(at *atomic.Int64, i int64) {
	for {
		cur := at.Load()
		if i >= cur || at.CompareAndSwap(cur, i) {
			return
		}
	}
}

// scanLowerDir reads one directory of one lower layer; withStat also
// keeps the directory's attributes as the read left them.
func (u *union) scanLowerDir(d lowerRef, withStat bool) (*layerScan, error) {
	l := u.lowers[d.layer]
	fd, err := l.open(d.rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open lower dir %q in %s: %w", d.rel, l.path, err)
	}
	defer unix.Close(fd)
	scan := &layerScan{}
	opaqueVal, hasOpaque := overlayOpaqueValue(fd)
	scan.opaque = hasOpaque && opaqueVal == "y"
	xwhiteouts := hasOpaque && opaqueVal == "x"
	err = readDirents(fd, func(name string, ino uint64, dtype uint8) error {
		switch {
		case whiteout.IsOCIOpaque(name):
			scan.opaque = true
			return nil
		case len(name) > len(whiteout.OCIPrefix) && name[:len(whiteout.OCIPrefix)] == whiteout.OCIPrefix:
			if target, ok := whiteout.OCITarget(name); ok {
				scan.whiteouts = append(scan.whiteouts, target)
			}
			return nil
		}
		mode := dtypeToMode(dtype)
		if mode == unix.S_IFCHR || (xwhiteouts && mode == unix.S_IFREG) || mode == 0 {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("stat %q in %s: %w", joinRel(d.rel, name), l.path, err)
			}
			mode = st.Mode & unix.S_IFMT
			if whiteout.IsCharWhiteout(&st) || (xwhiteouts && whiteout.IsWhiteout(fd, name, &st)) {
				scan.whiteouts = append(scan.whiteouts, name)
				return nil
			}
		}
		scan.entries = append(scan.entries, namedEntry{name: name, layer: d.layer, mode: mode, ino: ino})
		return nil
	})
	if err == nil && withStat {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			scan.st = &st
		}
	}
	return scan, err
}

// overlayOpaqueValue reads the overlay opaque xattr of a directory fd, from
// either private namespace: "y" is opaque, "x" means the directory holds
// xattr whiteouts.
func overlayOpaqueValue(fd int) (string, bool) {
	var buf [8]byte
	for _, attr := range []string{whiteout.XattrTrustedPrefix + "opaque", whiteout.XattrUserPrefix + "opaque"} {
		n, err := unix.Fgetxattr(fd, attr, buf[:])
		if err == nil {
			return string(buf[:n]), true
		}
	}
	return "", false
}

func dtypeToMode(t uint8) uint32 {
	switch t {
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	}
	return 0
}

// readDirents calls fn for every entry of the open directory fd except "."
// and "..".
func readDirents(fd int, fn func(name string, ino uint64, dtype uint8) error) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("getdents: %w", err)
		}
		if n <= 0 {
			return nil
		}
		for off := 0; off < n; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name
			rec := buf[off:]
			ino := le64(rec[0:8])
			reclen := int(rec[16]) | int(rec[17])<<8
			dtype := rec[18]
			nameBytes := rec[19:reclen]
			end := 0
			for end < len(nameBytes) && nameBytes[end] != 0 {
				end++
			}
			name := string(nameBytes[:end])
			off += reclen
			if name == "." || name == ".." {
				continue
			}
			if err := fn(name, ino, dtype); err != nil {
				return err
			}
		}
	}
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
