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
// the lowers: a missing name costs a binary search whatever the stack depth.
// (A partial listing, built for a lookup while a huge layer directory is
// unread, also stats the name in that directory: probe.go.)
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

	// partial is set on a listing built for lookups that left some
	// layer directories unread (probe.go): names and ents are empty, and
	// only find answers.
	partial *partialMerge
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
	if !u.reserveDirFd() {
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

// adoptDirFds takes over the cached descriptors of the partial listing
// this one replaces. Caller holds the owning node's mu.
func (ll *lowerListing) adoptDirFds(u *union, old *lowerListing) {
	old.fdMu.Lock()
	fds := old.dirFds
	old.dirFds = nil
	old.fdMu.Unlock()
	ll.fdMu.Lock()
	defer ll.fdMu.Unlock()
	for _, c := range fds {
		if _, kept := ll.keptFdLocked(c.layer); kept {
			unix.Close(c.fd)
			u.releaseDirFd()
			continue
		}
		ll.dirFds = append(ll.dirFds, c)
	}
}

// closeDirFds closes the cached descriptors. Caller holds the owning
// node's mu.
func (ll *lowerListing) closeDirFds(u *union) {
	ll.fdMu.Lock()
	defer ll.fdMu.Unlock()
	for _, c := range ll.dirFds {
		unix.Close(c.fd)
		u.releaseDirFd()
	}
	ll.dirFds = nil
}

// find returns name's entry, nil if no lower layer shows name. A partial
// listing probes the layers it did not read; caller holds the owning
// node's mu.
func (ll *lowerListing) find(u *union, name string) (*lowerEntry, error) {
	if ll.partial != nil {
		return ll.partial.find(u, ll, name)
	}
	return ll.entry(name), nil
}

// entry returns name's entry in a whole listing, nil if no lower layer
// shows name.
func (ll *lowerListing) entry(name string) *lowerEntry {
	i, found := slices.BinarySearch(ll.names, name)
	if !found {
		return nil
	}
	return &ll.ents[i]
}

// size is the number of names listed (of a partial listing: kept).
func (ll *lowerListing) size() int {
	if ll.partial != nil {
		return len(ll.partial.groups)
	}
	return len(ll.names)
}

// layerScan is what one layer's directory contributes: its names, with
// the whiteouts among them, and their sorted order.
type layerScan struct {
	items  []mergeItem // in the directory's own order
	order  []itemRef   // items by name, an entry before a whiteout of its name
	opaque bool
	// st is the directory's own attributes after it was read, for the
	// top of the set only (withStat).
	st *unix.Stat_t
	// probed: the directory was too large to read for a lookup; it holds
	// no items and is probed name by name (probe.go). xwhiteouts: it is
	// marked to hold whiteout files.
	probed, xwhiteouts bool
}

// mergeItem is one name of one layer directory while a merge is built:
// an entry, or a whiteout hiding the name in the layers below.
type mergeItem struct {
	name     string
	ino      uint64
	mode     uint32
	whiteout bool
}

// itemRef is an item's place in its scan with its name's sort key. A
// scan sorts these rather than the items: they are small and hold no
// pointer, so a sort moves few bytes and no write barrier runs.
type itemRef struct {
	key uint64 // nameKey of the item's name
	i   uint32 // index in layerScan.items
}

// nameKey is the first 8 bytes of name as a big-endian number, zero-padded.
// Keys order as the names do wherever they differ (a name holds no NUL), so
// most comparisons of a sort or a merge are one integer comparison.
func nameKey(name string) uint64 {
	var k uint64
	for i := range 8 {
		k <<= 8
		if i < len(name) {
			k |= uint64(name[i])
		}
	}
	return k
}

// compareNames orders two items by name, given their keys.
func compareNames(ka uint64, a *mergeItem, kb uint64, b *mergeItem) int {
	if ka != kb {
		if ka < kb {
			return -1
		}
		return 1
	}
	return strings.Compare(a.name, b.name)
}

// sortItems fills scan.order: the items by name, an entry before a
// whiteout of the same name (a layer may hold both; it shows its entry).
func (scan *layerScan) sortItems() {
	items := scan.items
	scan.order = make([]itemRef, len(items))
	for i := range items {
		scan.order[i] = itemRef{key: nameKey(items[i].name), i: uint32(i)}
	}
	slices.SortFunc(scan.order, func(a, b itemRef) int {
		x, y := &items[a.i], &items[b.i]
		if c := compareNames(a.key, x, b.key, y); c != 0 || x.whiteout == y.whiteout {
			return c
		}
		if y.whiteout {
			return -1
		}
		return 1
	})
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
//
// Each layer's scan comes back sorted (the workers of scanLowerDirs sort
// in parallel, each right after its read), so the merge is a k-way merge
// of sorted runs that yields the listing in its final order: no map of
// the names and no sort of the whole. A name's items from all layers
// arrive together, top layer first, and mergeName decides what the name
// shows.
func (u *union) buildLowerListing(dirs lowerDirSet) (*lowerListing, []int, error) {
	return u.mergeLowerDirs(dirs, 0)
}

// buildLookupListing is buildLowerListing for a lookup: layer directories
// of the mount's probe size or more are left unread, and the listing is
// then a partial one (probe.go).
func (u *union) buildLookupListing(dirs lowerDirSet) (*lowerListing, []int, error) {
	return u.mergeLowerDirs(dirs, u.cfg.probeOver())
}

// mergeLowerDirs builds the listing of dirs, probing layer directories of
// probeOver bytes or more (0: none).
func (u *union) mergeLowerDirs(dirs lowerDirSet, probeOver int64) (*lowerListing, []int, error) {
	scans := u.scanLowerDirs(dirs, probeOver)
	var used []int
	var runs []mergeRun
	var probes []probedDir
	total := 0
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
		if scan.probed {
			probes = append(probes, probedDir{layer: li, xwhiteouts: scan.xwhiteouts})
		}
		if len(scan.order) > 0 {
			runs = append(runs, mergeRun{scan: scan, layer: li})
			total += len(scan.order)
		}
		if scan.opaque {
			break
		}
	}
	if len(probes) > 0 {
		last := &probes[len(probes)-1]
		last.lowest = last.layer == used[len(used)-1]
		ll := &lowerListing{partial: newPartialMerge(dirs, runs, probes)}
		ll.top = topDirAttr(dirs, used, scans)
		return ll, used, nil
	}
	ll := &lowerListing{names: make([]string, 0, total), ents: make([]lowerEntry, 0, total)}
	mergeRuns(runs, func(group []layerItem) {
		if e, ok := mergeName(group); ok {
			ll.names = append(ll.names, group[0].name)
			ll.ents = append(ll.ents, e)
		}
	})
	if len(ll.names) < total {
		// Names shown by several layers, and whiteouts, were counted
		// more than once: keep only what the listing holds, since it
		// lives as long as the kernel keeps the directory.
		ll.names = append([]string(nil), ll.names...)
		ll.ents = append([]lowerEntry(nil), ll.ents...)
	}
	ll.top = topDirAttr(dirs, used, scans)
	return ll, used, nil
}

// topDirAttr is the attributes of the merge's top directory, when that
// is the set's first layer.
func topDirAttr(dirs lowerDirSet, used []int, scans []scanResult) dirAttr {
	if len(used) > 0 && used[0] == dirs.layers[0] && scans[0].scan.st != nil {
		return newDirAttr(used[0], scans[0].scan.st)
	}
	return dirAttr{}
}

// layerItem is a mergeItem with the layer it comes from.
type layerItem struct {
	*mergeItem
	layer int
}

// mergeName decides what one name shows, given its items from every
// merged layer, top layer first and within a layer the entry before the
// whiteout. The topmost entry not hidden by a whiteout above it wins. A
// directory that wins merges the same-named directories below it, down to
// the first layer where the name is not a directory or is whited out
// (overlayfs stops a merge there too). A whiteout in the winner's own layer
// changes nothing: the layer shows its entry.
func mergeName(group []layerItem) (lowerEntry, bool) {
	var win *layerItem
	var dirLayers []int
	closed := false
	for i := range group {
		it := &group[i]
		if it.whiteout {
			if win == nil {
				return lowerEntry{}, false // hidden in every layer below
			}
			if it.layer != win.layer {
				closed = true
			}
			continue
		}
		switch {
		case win == nil:
			win = it
			if it.mode == unix.S_IFDIR {
				dirLayers = []int{it.layer}
			}
		case win.mode != unix.S_IFDIR || closed:
		case it.mode == unix.S_IFDIR:
			dirLayers = append(dirLayers, it.layer)
		default:
			closed = true
		}
	}
	if win == nil {
		return lowerEntry{}, false
	}
	e := lowerEntry{ino: win.ino, top: uint16(win.layer), typ: uint16(win.mode)}
	if dirLayers != nil {
		e.dirs = &dirLayers
	}
	return e, true
}

// mergeRun is one layer's scan, consumed in its sorted order; key and
// item are its next item, cached for the heap's comparisons.
type mergeRun struct {
	scan  *layerScan
	layer int
	key   uint64
	item  *mergeItem
}

// advance moves the run to its next item; false once it has none.
func (r *mergeRun) advance() bool {
	if len(r.scan.order) == 0 {
		return false
	}
	ref := r.scan.order[0]
	r.scan.order = r.scan.order[1:]
	r.key, r.item = ref.key, &r.scan.items[ref.i]
	return true
}

// mergeRuns calls emit with each name's items from all runs, in name
// order; within a name, in the runs' order (top layer first), and a
// layer's entry before its whiteout. The runs sit in a binary heap keyed
// by their next item; when one run holds a long stretch of the names, as
// a big bottom layer does, its head stays at the root and a step costs
// two comparisons of integer keys.
func mergeRuns(runs []mergeRun, emit func([]layerItem)) {
	// h holds run indexes; ties at the same name go to the upper layer,
	// the earlier run.
	h := make([]int, 0, len(runs))
	for i := range runs {
		if runs[i].advance() {
			h = append(h, i)
		}
	}
	less := func(a, b int) bool {
		x, y := &runs[a], &runs[b]
		if c := compareNames(x.key, x.item, y.key, y.item); c != 0 {
			return c < 0
		}
		return a < b
	}
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			m := l
			if r := l + 1; r < len(h) && less(h[r], h[l]) {
				m = r
			}
			if !less(h[m], h[i]) {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	var group []layerItem
	for len(h) > 0 {
		r := &runs[h[0]]
		it := r.item
		if len(group) > 0 && group[0].name != it.name {
			emit(group)
			group = group[:0]
		}
		group = append(group, layerItem{it, r.layer})
		if !r.advance() {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		down(0)
	}
	if len(group) > 0 {
		emit(group)
	}
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
func (u *union) scanLowerDirs(dirs lowerDirSet, probeOver int64) []scanResult {
	results := make([]scanResult, len(dirs.layers))
	scanAt := func(i int) bool {
		scan, err := u.scanLowerDir(lowerRef{layer: dirs.layers[i], rel: dirs.rel}, i == 0, probeOver)
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
// keeps the directory's attributes as the read left them. A directory of
// probeOver bytes or more (0: none) is left unread, marked probed.
func (u *union) scanLowerDir(d lowerRef, withStat bool, probeOver int64) (*layerScan, error) {
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
	if probeOver > 0 {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Size >= probeOver {
			return probeScan(fd, &st, scan, xwhiteouts, withStat), nil
		}
	}
	err = readDirents(fd, func(name string, ino uint64, dtype uint8) error {
		switch {
		case whiteout.IsOCIOpaque(name):
			scan.opaque = true
			return nil
		case hasOCIWhiteoutPrefix(name):
			if target, ok := whiteout.OCITarget(name); ok {
				scan.items = append(scan.items, mergeItem{name: target, whiteout: true})
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
			if isLayerWhiteout(fd, name, &st, xwhiteouts) {
				scan.items = append(scan.items, mergeItem{name: name, whiteout: true})
				return nil
			}
		}
		scan.items = append(scan.items, mergeItem{name: name, mode: mode, ino: ino})
		return nil
	})
	scan.sortItems()
	if err == nil && withStat {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			scan.st = &st
		}
	}
	return scan, err
}

// hasOCIWhiteoutPrefix reports whether name starts with the OCI whiteout
// prefix and goes on: a layer never shows such a name (it is a whiteout
// file, or not a valid one and ignored).
func hasOCIWhiteoutPrefix(name string) bool {
	return len(name) > len(whiteout.OCIPrefix) && strings.HasPrefix(name, whiteout.OCIPrefix)
}

// isLayerWhiteout reports whether the entry name (stat st) of the layer
// directory open as fd is a whiteout: a whiteout device, or a whiteout
// file in a directory marked to hold them (xwhiteouts). Reading a layer
// and probing one decide by this one rule.
func isLayerWhiteout(fd int, name string, st *unix.Stat_t, xwhiteouts bool) bool {
	return whiteout.IsCharWhiteout(st) || xwhiteouts && whiteout.IsWhiteout(fd, name, st)
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
