package fs

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// Probed lower directories.
//
// A lookup in a directory merges its lower layers first (dirlist.go), so
// that every later lookup costs a search in memory whatever the depth of
// the stack. For a huge layer directory that first merge is the expensive
// part: reading 100,000 entries from a cold ext4 directory takes a tenth of
// a second, while a program that looks up a few names in it (a loader in
// a big library directory, a stat of some files of a data set) would have
// paid a few microseconds per name.
//
// So a merge made for a lookup reads only the layer directories smaller
// than Config.ProbeDirSize; a larger one is probed: each name is looked up
// in it with fstatat as it is asked for. The layers read are merged as
// usual but kept per name with their items (partialMerge.groups); a lookup
// adds what the probes find in their layers and decides the name with the
// same rule as the whole merge (mergeName), so both ways give the same
// answer by construction. The cost of a lookup grows with the number of
// probed directories of the stack, not with its depth: the small layers
// above and below a big one are merged once.
//
// What a probe reports for a name is what reading the layer would have
// found: the entry, unless it is a whiteout device or (in a directory
// marked for them) a whiteout file, in which case a whiteout; and a
// whiteout if the layer holds the name's OCI ".wh." file. That last probe
// is skipped in the lowest merged layer, where a whiteout hides nothing.
// Names with the OCI prefix never show, whatever the layers hold.
//
// A listing built this way answers lookups only. The first READDIR (or
// anything else that needs every name) takes the whole merge: the one a
// worker built, the one a worker is building (waiting for it), or one it
// builds itself; the node keeps that instead, with the probed layers'
// descriptors, as it does when a lookup finds it built. Probes use
// the listing's cached layer descriptors (lowerDirFd), under the owning
// node's mu like every other user of them.

// probedDir is a layer directory of a merge that is looked up name by
// name instead of read.
type probedDir struct {
	layer int
	// xwhiteouts: the directory is marked to hold whiteout files (the
	// overlay opaque xattr is "x").
	xwhiteouts bool
	// lowest: no layer below it is merged, so whiteouts in it hide
	// nothing and need not be looked for.
	lowest bool
}

// partialMerge is a lowerListing that answers lookups only: the merge of
// the layers read, kept per name, and the probed layers.
type partialMerge struct {
	dirs   lowerDirSet            // the set merged, as asked for
	groups map[string][]layerItem // the read layers' items of each name, top layer first
	probes []probedDir            // top layer first
	// whole is the whole merge of dirs once it is built, in the
	// background by the prefetcher or by a listing that could not wait;
	// the node then keeps it instead. wholeState says where that build
	// is; wholeEnded is closed when it has ended (whole is then set, or
	// the build failed or was given up).
	whole      atomic.Pointer[lowerListing]
	wholeState atomic.Int32
	wholeEnded chan struct{}
}

// The states of a partial listing's whole merge. Whoever moves it to
// wholeBuilding builds it and ends it (endWhole).
const (
	wholeNotAsked int32 = iota
	wholeQueued         // waiting for a prefetch worker
	wholeBuilding
	wholeDone
)

// claimWhole moves the whole merge from state from to wholeBuilding; the
// caller that succeeds must end it.
func (pm *partialMerge) claimWhole(from int32) bool {
	return pm.wholeState.CompareAndSwap(from, wholeBuilding)
}

// endWhole ends the build claimed: ll is the whole merge, or nil if it
// failed or was given up.
func (pm *partialMerge) endWhole(ll *lowerListing) {
	if ll != nil {
		pm.whole.Store(ll)
	}
	pm.wholeState.Store(wholeDone)
	close(pm.wholeEnded)
}

// wholeMerge returns the whole merge: built here if no one has started
// it, else the one being built or built, once it is there (built here
// after all if that failed).
func (pm *partialMerge) wholeMerge(u *union) (*lowerListing, error) {
	if pm.claimWhole(wholeNotAsked) || pm.claimWhole(wholeQueued) {
		ll, _, err := u.buildLowerListing(pm.dirs)
		if err != nil {
			ll = nil
		}
		pm.endWhole(ll)
		return ll, err
	}
	<-pm.wholeEnded
	if ll := pm.whole.Load(); ll != nil {
		return ll, nil
	}
	ll, _, err := u.buildLowerListing(pm.dirs)
	if err != nil {
		return nil, err
	}
	pm.whole.Store(ll)
	return ll, nil
}

// probeScan completes the scan of a layer directory too large to read:
// only what decides the merge as a whole (opacity) and the directory's
// own attributes are taken from it.
func probeScan(fd int, st *unix.Stat_t, scan *layerScan, xwhiteouts, withStat bool) *layerScan {
	scan.probed, scan.xwhiteouts = true, xwhiteouts
	var marker unix.Stat_t
	if unix.Fstatat(fd, whiteout.OCIOpaque, &marker, unix.AT_SYMLINK_NOFOLLOW) == nil {
		scan.opaque = true
	}
	if withStat {
		scan.st = st
	}
	return scan
}

// newPartialMerge keeps the runs of the layers read, name by name.
func newPartialMerge(dirs lowerDirSet, runs []mergeRun, probes []probedDir) *partialMerge {
	pm := &partialMerge{dirs: dirs, groups: map[string][]layerItem{}, probes: probes, wholeEnded: make(chan struct{})}
	mergeRuns(runs, func(group []layerItem) {
		pm.groups[group[0].name] = slices.Clone(group)
	})
	return pm
}

// find decides name: the read layers' items and the probed layers' ones
// in stack order, merged by the rule of the whole merge. Caller holds the
// owning node's mu (ll's descriptors).
func (pm *partialMerge) find(u *union, ll *lowerListing, name string) (*lowerEntry, error) {
	if hasOCIWhiteoutPrefix(name) {
		return nil, nil
	}
	read := pm.groups[name]
	var probed []layerItem
	for i := range pm.probes {
		items, err := pm.probe(u, ll, &pm.probes[i], name)
		if err != nil {
			return nil, err
		}
		for k := range items {
			probed = append(probed, layerItem{&items[k], pm.probes[i].layer})
		}
	}
	group := read
	if len(probed) > 0 {
		// Layer indexes grow down the stack (lowerDirSet); a stable sort
		// keeps each layer's entry before its whiteout.
		group = append(slices.Clone(read), probed...)
		slices.SortStableFunc(group, func(a, b layerItem) int { return cmp.Compare(a.layer, b.layer) })
	}
	e, ok := mergeName(group)
	if !ok {
		return nil, nil
	}
	return &e, nil
}

// probe looks name up in one probed layer directory and returns the items
// reading it would have given: the entry or the whiteout it is, then a
// whiteout if the layer holds name's OCI whiteout file.
func (pm *partialMerge) probe(u *union, ll *lowerListing, p *probedDir, name string) ([]mergeItem, error) {
	dirfd, mustClose, err := ll.lowerDirFd(u, pm.dirs, p.layer)
	if err != nil {
		return nil, fmt.Errorf("open lower dir %q in %s: %w", pm.dirs.rel, u.lowers[p.layer].path, err)
	}
	if mustClose {
		defer unix.Close(dirfd)
	}
	var items []mergeItem
	var st unix.Stat_t
	err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil:
		hidden := isLayerWhiteout(dirfd, name, &st, p.xwhiteouts)
		items = append(items, mergeItem{name: name, ino: st.Ino, mode: st.Mode & unix.S_IFMT, whiteout: hidden})
	case !errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("stat %q in %s: %w", joinRel(pm.dirs.rel, name), u.lowers[p.layer].path, err)
	}
	if p.lowest {
		return items, nil
	}
	// A name of 252 bytes or more has no whiteout file (ENAMETOOLONG):
	// its name would be too long.
	err = unix.Fstatat(dirfd, whiteout.OCIName(name), &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil:
		items = append(items, mergeItem{name: name, whiteout: true})
	case !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENAMETOOLONG):
		return nil, fmt.Errorf("stat %q in %s: %w", joinRel(pm.dirs.rel, whiteout.OCIName(name)), u.lowers[p.layer].path, err)
	}
	return items, nil
}
