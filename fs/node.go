package fs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// node is one inode of the union view. Nodes are keyed by inode number
// (union.nodes), so two names that are hard links of one lower file share
// one node.
type node struct {
	// The fields are ordered by size, so the node packs without padding
	// into the 128-byte allocation class (the size test in node_test.go
	// holds it there): nodes are most of the daemon's memory.
	u   *union
	ino uint64 // st_ino shown to the user; never changes

	// parent and name are one name of this node in the view, the one used
	// to reach its upper entry. Written with u.treeMu held exclusively, or
	// held shared together with mu (an unlink detaching the node).
	parent *node
	name   string

	// mu guards the fields below it. Lock order: u.treeMu, then a
	// directory node's mu before its children's; two unrelated nodes in
	// address order.
	mu sync.Mutex
	// lower is the lower object this one shows or was copied from; for a
	// metacopy upper file it is where the data still lives (hasLower).
	lower lowerRef
	// dir is what only a directory has; nil for every other kind.
	dir *dirState
	// opens is the open file bookkeeping for passthrough (file.go); nil
	// until the first open.
	opens *openState
	// xattrs caches the object's xattr names (see attr.go).
	xattrs xattrNames
	// id is the node's id in the FUSE protocol while the kernel holds it,
	// 0 otherwise (kernel.go). Written under u.nodesMu; atomic, so a
	// reply or a notification reads it without that lock.
	id atomic.Uint64

	kind uint32 // S_IFMT; never changes
	// kref counts the kernel's references to the node (kernel.go),
	// saturating. Guarded by u.nodesMu.
	kref uint32
	// lowerNames: for an index node, the number of its names that are
	// still only in a lower layer, so st_nlink stays right.
	lowerNames uint32
	// anonFd is a descriptor of an O_TMPFILE file that has no name yet,
	// -1 otherwise (see Tmpfile).
	anonFd int32

	// inUpper: the object exists in the upper layer at parent/name.
	inUpper  bool
	hasLower bool
	// metacopy: the upper file holds metadata only; data is in lower.
	metacopy bool
	// index: the node is a hard-linked lower file whose copy lives in the
	// work dir's index (see index.go); its names are linked to it as they
	// are used.
	index bool
	// twin: the object has, or had, a second kernel inode (see
	// union.supersede); its attributes are not cached by the kernel.
	twin bool
	// relFromName: lower.rel is not stored but is the parent's lower
	// directory joined with name (lowerRel), as for most files; a full
	// path per node was a fifth of the daemon's heap. Set at the node's
	// making only; cleared, with the path stored, before parent or name
	// change (keepLowerRel).
	relFromName bool
}

// lowerRel is the path of the node's lower object in its layer. Caller
// holds u.treeMu shared and n.mu, or u.treeMu exclusively.
func (n *node) lowerRel() string {
	if n.relFromName {
		return joinRel(n.parent.lowerSet().rel, n.name)
	}
	return n.lower.rel
}

// keepLowerRel stores the lower path before the node's parent or name
// changes. Caller holds what a change of parent or name needs.
func (n *node) keepLowerRel() {
	if n.relFromName {
		n.lower.rel = n.lowerRel()
		n.relFromName = false
	}
}

// dirState is the part of a node only a directory needs. Keeping it out of
// the node keeps the node of every other object (most of them: nodes are
// most of the daemon's memory, one per inode the kernel holds) in a
// smaller allocation.
type dirState struct {
	// lowerDirs are the lower directories merged below the upper one,
	// listing the cached merge of their entries (built on first use).
	// listing is written once, under the node's mu; a child reads it
	// without (statLower), hence the atomic pointer.
	lowerDirs lowerDirSet
	listing   atomic.Pointer[lowerListing]
	// fd caches a descriptor of the directory's upper entry (dirfd.go).
	fd cachedDirFd
	// upperOpaque: the upper directory is opaque, hiding all below it.
	upperOpaque bool
	// listedBare: the last listing gave files no attributes (plus.go).
	listedBare bool
}

// lowerListingIfBuilt is the directory's merged listing if it was built
// already, else nil.
func (n *node) lowerListingIfBuilt() *lowerListing {
	if n.dir == nil {
		return nil
	}
	return n.dir.listing.Load()
}

// opaque reports whether the node is an opaque upper directory.
func (n *node) opaque() bool { return n.dir != nil && n.dir.upperOpaque }

// lowerSet is where a directory's lower content lives; empty for anything
// else.
func (n *node) lowerSet() lowerDirSet {
	if n.dir == nil {
		return lowerDirSet{}
	}
	return n.dir.lowerDirs
}

// dirFd is the directory's descriptor cache; nil, which caches nothing,
// for other nodes.
func (n *node) dirFd() *cachedDirFd {
	if n.dir == nil {
		return nil
	}
	return &n.dir.fd
}

func (u *union) newRoot() (*node, error) {
	root := &node{u: u, kind: unix.S_IFDIR, anonFd: -1, dir: &dirState{}}
	all := make([]int, len(u.lowers))
	for i := range all {
		all[i] = i
	}
	root.dir.lowerDirs = lowerDirSet{rel: "", layers: all}
	var st unix.Stat_t
	if u.upper != nil {
		root.inUpper = true
		if err := unix.Fstat(u.upper.rootFd, &st); err != nil {
			return nil, fmt.Errorf("upper: %w", err)
		}
		fd, err := u.upper.open("", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, fmt.Errorf("upper: %w", err)
		}
		v, ok := overlayOpaqueValue(fd)
		unix.Close(fd)
		if ok && v == "y" {
			root.dir.upperOpaque = true
			root.dir.lowerDirs = lowerDirSet{}
		}
		root.ino = u.upper.foldIno(st.Ino)
	} else {
		if err := unix.Fstat(u.lowers[0].rootFd, &st); err != nil {
			return nil, fmt.Errorf("lower: %w", err)
		}
		root.ino = u.lowers[0].foldIno(st.Ino)
	}
	if root.ino <= 1 {
		root.ino = 1
	}
	return root, nil
}

// upperRel is the node's path relative to the upper root. Caller holds
// u.treeMu (shared is enough).
func (n *node) upperRel() string {
	if n.parent == nil {
		return ""
	}
	var parts []string
	for p := n; p.parent != nil; p = p.parent {
		parts = append(parts, p.name)
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// openUpperDir opens this directory's upper entry as O_PATH. Caller holds
// u.treeMu shared.
func (n *node) openUpperDir() (int, error) {
	if fd, ok := n.dirFd().dup(); ok {
		return fd, nil
	}
	fd, err := n.u.upper.openDir(n.upperRel())
	if err == nil && n.kind == unix.S_IFDIR {
		n.dirFd().keep(n.u, fd)
	}
	return fd, err
}

// openUpperParent opens the upper directory that holds this node's entry
// and returns it with the entry's name. Caller holds u.treeMu shared.
func (n *node) openUpperParent() (int, string, error) {
	if n.parent == nil {
		if n.anonFd >= 0 {
			// An O_TMPFILE file with no name yet: the object itself.
			fd, err := unix.Dup(int(n.anonFd))
			return fd, "", err
		}
		if !n.isRoot() {
			// Its recorded name was removed or replaced. A hard link
			// may still name it (aliases.go).
			if p, name, ok := n.u.takeAlias(n); ok {
				n.parent, n.name = p, name
				fd, err := p.openUpperDir()
				return fd, name, err
			}
			// Unlinked: only its open handles reach it now.
			if fd := n.liveUpperFd(); fd >= 0 {
				dup, err := unix.Dup(fd)
				return dup, "", err
			}
			return -1, "", unix.ENOENT
		}
		fd, err := unix.Dup(n.u.upper.rootFd)
		return fd, "", err
	}
	fd, err := n.parent.openUpperDir()
	return fd, n.name, err
}

// withCachedUpperParent runs fn on the node's upper entry through its
// parent's cached descriptor, without duplicating it, and reports whether
// it could (the parent has one, and the object is not an index entry).
// fn runs under that descriptor's leaf lock, so it must only make system
// calls and touch n's own fields. Caller holds u.treeMu shared and n.mu.
func (n *node) withCachedUpperParent(fn func(dirfd int, name string) error) (bool, error) {
	if n.index || n.parent == nil {
		return false, nil
	}
	var err error
	done := n.parent.dirFd().with(func(dirfd int) { err = fn(dirfd, n.name) })
	return done, err
}

// openObject opens the directory holding the node's upper object and
// returns it with the object's name there: the index entry for a hard-linked
// lower file that was copied up, else the node's own upper entry. Caller
// holds u.treeMu shared and n.mu.
func (n *node) openObject() (int, string, error) {
	if n.index {
		fd, err := n.u.work.openDir(indexDir)
		return fd, indexName(n.ino), err
	}
	return n.openUpperParent()
}

// lowerChildRef is where the child name of this directory lives in layer li.
func (n *node) lowerChildRef(li int, name string) lowerRef {
	return lowerRef{layer: li, rel: joinRel(n.lowerSet().rel, name)}
}

// lowerListingLocked returns the cached merge of the lower directories,
// whole (every name listed), building it on first use or in place of a
// partial one. Caller holds n.mu.
func (n *node) lowerListingLocked() (*lowerListing, error) {
	ll, err := n.lowerMergeLocked(false)
	if err != nil || ll.partial == nil {
		return ll, err
	}
	whole, err := ll.partial.wholeMerge(n.u)
	if err != nil {
		return nil, err
	}
	return n.keepWholeLocked(ll, whole), nil
}

// keepWholeLocked has the node keep the whole merge of its partial
// listing instead, with the descriptors the partial one cached. Caller
// holds n.mu.
func (n *node) keepWholeLocked(partial, whole *lowerListing) *lowerListing {
	whole.adoptDirFds(n.u, partial)
	n.dir.listing.Store(whole)
	return whole
}

// lowerLookupLocked returns the cached merge of the lower directories for
// a lookup (find): a partial one will do (probe.go). Caller holds n.mu.
func (n *node) lowerLookupLocked() (*lowerListing, error) {
	return n.lowerMergeLocked(true)
}

// lowerMergeLocked returns the cached merge, building it on first use,
// partial if forLookup allows. Caller holds n.mu.
func (n *node) lowerMergeLocked(forLookup bool) (*lowerListing, error) {
	d := n.dir
	if d == nil {
		return &lowerListing{}, nil // not a directory: lists nothing
	}
	if ll := d.listing.Load(); ll != nil {
		if ll.partial == nil {
			return ll, nil
		}
		if whole := ll.partial.whole.Load(); whole != nil {
			return n.keepWholeLocked(ll, whole), nil
		}
		return ll, nil
	}
	if d.lowerDirs.empty() {
		ll := &lowerListing{}
		d.listing.Store(ll)
		return ll, nil
	}
	ll, used, err := n.u.prefetch.listing(d.lowerDirs, forLookup)
	if err != nil {
		return nil, err
	}
	d.lowerDirs.layers = used
	d.listing.Store(ll)
	return ll, nil
}

// childInfo is what a lookup learns about a name before it becomes a node.
type childInfo struct {
	st       unix.Stat_t
	ino      uint64
	inUpper  bool
	lower    lowerRef
	hasLower bool
	metacopy bool
	dirs     lowerDirSet
	opaque   bool
	// index: the object is the index entry of a hard-linked lower file;
	// inUpper then says whether this name is linked to it yet.
	index      bool
	lowerNames uint32
	// xattrs are the object's xattr names as far as the lookup learnt
	// them (the upper entry's list; none for a lower entry the prefetcher
	// saw without any); the node starts its cache with them.
	xattrs xattrNames
}

// Lookup finds name in the view: the upper layer first, then the merged
// lower listing. A file found in a directory whose last listing left files
// bare tells the READDIRPLUS policy (plus.go) that the files are wanted.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*node, syscall.Errno) {
	child, errno := n.lookupEntry(name, out)
	if errno == 0 && out.Attr.Mode&unix.S_IFMT != unix.S_IFDIR {
		n.mu.Lock()
		bare := n.dir != nil && n.dir.listedBare
		n.mu.Unlock()
		if bare {
			n.u.plus.bareLookedUp()
		}
	}
	return child, errno
}

// lookupEntry is Lookup without the policy's bookkeeping. The node it
// returns carries a kernel reference for the reply.
func (n *node) lookupEntry(name string, out *fuse.EntryOut) (*node, syscall.Errno) {
	if len(name) > 255 {
		return nil, syscall.ENAMETOOLONG
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	ci, err := n.lookupName(name)
	if err != nil {
		return nil, toErrno(err)
	}
	child := n.newChild(name, ci, true)
	child.fillEntry(&ci.st, out)
	return child, 0
}

// lookupName is lookupLocked under n.mu.
func (n *node) lookupName(name string) (*childInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lookupLocked(name)
}

// lookupLocked resolves name. Caller holds u.treeMu shared and n.mu.
func (n *node) lookupLocked(name string) (*childInfo, error) {
	ll, err := n.lowerLookupLocked()
	if err != nil {
		return nil, err
	}
	lowerEnt, err := ll.find(n.u, name)
	if err != nil {
		return nil, err
	}
	if n.inUpper {
		ci, found, err := n.lookupUpper(name, lowerEnt)
		if err != nil || found {
			return ci, err
		}
		if n.opaque() {
			return nil, unix.ENOENT
		}
	}
	if lowerEnt == nil {
		return nil, unix.ENOENT
	}
	return n.lookupLower(name, lowerEnt)
}

// lookupUpper checks the upper directory for name. found is false when the
// upper has no entry; a whiteout is found and answers ENOENT.
func (n *node) lookupUpper(name string, lowerEnt *lowerEntry) (*childInfo, bool, error) {
	// The name is stat'ed once: through the cached descriptor when there
	// is one, which answers the common case (nothing in the upper layer:
	// a lower entry, or a new file being created) without opening
	// anything; an entry that is there needs a descriptor of its own for
	// the rest.
	// A plain file found there (no whiteout, no metacopy) is completed
	// under the cached descriptor too.
	ci := &childInfo{inUpper: true}
	var statErr error
	var whited, metaRead bool
	statName := func(dirfd int) {
		statErr = unix.Fstatat(dirfd, name, &ci.st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(statErr, unix.ENOENT) && n.u.wfmt == whiteout.FormatOCI {
			whited = n.hasOCIWhiteout(dirfd, name)
		}
		if statErr == nil && cannotBeWhiteoutOrDir(&ci.st) {
			n.u.readUpperMeta(dirfd, name, ci)
			metaRead = true
		}
	}
	statted := n.dirFd().with(statName)
	if statted && metaRead && !ci.metacopy {
		n.u.checkIndex(ci)
		n.upperFileOrigin(name, lowerEnt, ci)
		return ci, true, nil
	}
	if !statted || statErr == nil {
		dirfd, err := n.openUpperDir()
		if err != nil {
			return nil, false, fmt.Errorf("open upper dir: %w", err)
		}
		defer unix.Close(dirfd)
		if !statted {
			statName(dirfd)
		}
		if statErr == nil {
			return n.upperChild(dirfd, name, lowerEnt, ci)
		}
	}
	switch {
	case whited:
		return nil, true, unix.ENOENT
	case errors.Is(statErr, unix.ENOENT):
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("stat upper %q: %w", name, statErr)
}

// upperChild completes the lookup of an entry found in the upper
// directory dirfd.
func (n *node) upperChild(dirfd int, name string, lowerEnt *lowerEntry, ci *childInfo) (*childInfo, bool, error) {
	if whiteout.IsWhiteout(dirfd, name, &ci.st) {
		return nil, true, unix.ENOENT
	}
	n.u.readUpperMeta(dirfd, name, ci)
	n.u.checkIndex(ci)
	mode := ci.st.Mode & unix.S_IFMT
	switch {
	case mode == unix.S_IFDIR:
		n.upperDirLowers(dirfd, name, lowerEnt, ci)
	case ci.metacopy:
		n.metacopyLower(dirfd, name, lowerEnt, ci)
	default:
		n.upperFileOrigin(name, lowerEnt, ci)
	}
	return ci, true, nil
}

// upperFileOrigin notes the lower entry an upper non-directory without
// metacopy was copied up from, if any: a copied-up file remembers its
// origin only for identity.
func (n *node) upperFileOrigin(name string, lowerEnt *lowerEntry, ci *childInfo) {
	if lowerEnt != nil && lowerEnt.mode() == ci.st.Mode&unix.S_IFMT {
		ci.lower = n.lowerChildRef(lowerEnt.layer(), name)
		ci.hasLower = false
	}
}

// cannotBeWhiteoutOrDir reports whether an upper entry with attributes st
// is neither a directory nor possibly a whiteout (a 0/0 character device,
// or an empty regular file that may carry the whiteout xattr).
func cannotBeWhiteoutOrDir(st *unix.Stat_t) bool {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR, unix.S_IFCHR:
		return false
	case unix.S_IFREG:
		return st.Size > 0
	}
	return true
}

func (n *node) hasOCIWhiteout(dirfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirfd, whiteout.OCIName(name), &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// readUpperMeta reads strata's and overlay's bookkeeping of an upper entry:
// the inode number it had before copy-up, and whether it is a metacopy.
func (u *union) readUpperMeta(dirfd int, name string, ci *childInfo) {
	ci.ino = u.upper.foldIno(ci.st.Ino)
	// One listxattr tells which bookkeeping xattrs exist; an entry made in
	// the upper layer (the common case) has none, and then no value is
	// read.
	if names, err := listXattrNames(dirfd, name); err == nil {
		ci.xattrs = knownXattrNames(names)
	}
	if ci.xattrs.lists(u.xattrPrefix + "ino") {
		if v, ok := getxattrString(dirfd, name, u.xattrPrefix+"ino"); ok {
			if ino, err := strconv.ParseUint(v, 10, 64); err == nil && ino > 1 {
				ci.ino = ino
			}
		}
	}
	if ci.st.Mode&unix.S_IFMT == unix.S_IFREG && ci.xattrs.lists(u.overlayNS+"metacopy") {
		ci.metacopy = true
	}
}

// upperDirLowers decides which lower directories merge below an upper one:
// none if it is opaque, those of its redirect if it was renamed, else those
// of the same name below.
func (n *node) upperDirLowers(dirfd int, name string, lowerEnt *lowerEntry, ci *childInfo) {
	// has: the xattr may exist (the name list is unknown, or lists it).
	has := ci.xattrs.mayHave
	if has(n.u.overlayNS + "opaque") {
		if v, ok := getxattrString(dirfd, name, n.u.overlayNS+"opaque"); ok && v == "y" {
			ci.opaque = true
			return
		}
	}
	if n.u.wfmt == whiteout.FormatOCI {
		if sub, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
			var st unix.Stat_t
			isOpaque := unix.Fstatat(sub, whiteout.OCIOpaque, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
			unix.Close(sub)
			if isOpaque {
				ci.opaque = true
				return
			}
		}
	}
	if has(n.u.overlayNS + "redirect") {
		if redirect, ok := getxattrString(dirfd, name, n.u.overlayNS+"redirect"); ok {
			ci.dirs = n.u.resolveRedirect(n, redirect, unix.S_IFDIR)
			return
		}
	}
	if lowerEnt != nil && lowerEnt.mode() == unix.S_IFDIR {
		ci.dirs = n.lowerSet().child(name, lowerEnt.dirLayers())
	}
}

// metacopyLower finds the data of a metacopy upper file: its redirect, or
// the same name below.
func (n *node) metacopyLower(dirfd int, name string, lowerEnt *lowerEntry, ci *childInfo) {
	if redirect, ok := getxattrString(dirfd, name, n.u.overlayNS+"redirect"); ok {
		dirs := n.u.resolveRedirect(n, redirect, unix.S_IFREG)
		if !dirs.empty() {
			ci.lower, ci.hasLower = lowerRef{layer: dirs.layers[0], rel: dirs.rel}, true
			return
		}
	}
	if lowerEnt != nil && lowerEnt.mode() == unix.S_IFREG {
		ci.lower, ci.hasLower = n.lowerChildRef(lowerEnt.layer(), name), true
		return
	}
	// The data is gone: show the metadata with what the upper holds.
	ci.metacopy = false
}

// resolveRedirect finds the lower objects named by an overlay redirect: an
// absolute path from the lower roots, or a bare name relative to the parent
// directory's lower location. The path is looked up in each layer, top
// down, as overlayfs looks it up: a layer holding it with the wanted type
// counts; a whiteout, a non-directory, or an object of another type on
// the way ends the search, and so does an opaque directory, after its own
// layer. A file counts in its topmost layer only.
func (u *union) resolveRedirect(parent *node, redirect string, kind uint32) lowerDirSet {
	var rel string
	if strings.HasPrefix(redirect, "/") {
		rel = strings.Trim(redirect, "/")
	} else {
		rel = joinRel(parent.lowerSet().rel, redirect)
	}
	set := lowerDirSet{rel: rel}
	if rel == "" {
		return set
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			// Not a path strata or overlayfs writes; a ".." would
			// lead out of the layer (the lookups below are by name).
			return lowerDirSet{rel: rel}
		}
	}
	for i, l := range u.lowers {
		found, stop := redirectTargetIn(l, parts, kind)
		if found {
			set.layers = append(set.layers, i)
			if kind != unix.S_IFDIR {
				break
			}
		}
		if stop {
			break
		}
	}
	return set
}

// redirectTargetIn looks the path parts up in lower layer l. found: the
// layer holds it with type kind. stop: no layer below can show it.
func redirectTargetIn(l *layer, parts []string, kind uint32) (found, stop bool) {
	for k, name := range parts {
		dirfd, err := l.open(strings.Join(parts[:k], "/"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return false, false
		}
		last := k == len(parts)-1
		if k > 0 && opaqueDir(dirfd) {
			stop = true // an opaque directory on the way hides the layers below
		}
		var st unix.Stat_t
		hidden := unix.Fstatat(dirfd, whiteout.OCIName(name), &st, unix.AT_SYMLINK_NOFOLLOW) == nil
		err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && !hidden {
			hidden = whiteout.IsCharWhiteout(&st) || xattrWhiteoutsIn(dirfd) && whiteout.IsWhiteout(dirfd, name, &st)
		}
		unix.Close(dirfd)
		switch {
		case hidden:
			return false, true
		case err != nil:
			return false, stop
		case !last && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return false, true
		case last && st.Mode&unix.S_IFMT != kind:
			return false, true
		}
	}
	if kind == unix.S_IFDIR {
		if fd, err := l.open(strings.Join(parts, "/"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err == nil {
			stop = stop || opaqueDir(fd)
			unix.Close(fd)
		}
	}
	return true, stop
}

// opaqueDir reports whether the lower directory open as fd is opaque, in
// overlay's format or the OCI one.
func opaqueDir(fd int) bool {
	if whiteout.IsOpaque(fd) {
		return true
	}
	var st unix.Stat_t
	return unix.Fstatat(fd, whiteout.OCIOpaque, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// xattrWhiteoutsIn reports whether the lower directory open as fd may hold
// whiteouts marked by xattr (overlay's opaque value "x").
func xattrWhiteoutsIn(fd int) bool {
	v, ok := overlayOpaqueValue(fd)
	return ok && v == "x"
}

// lookupLower stats the topmost lower entry for name.
func (n *node) lookupLower(name string, e *lowerEntry) (*childInfo, error) {
	ref := n.lowerChildRef(e.layer(), name)
	l := n.u.lowers[e.layer()]
	ci := &childInfo{lower: ref, hasLower: true}
	dirfd, mustClose, err := n.dir.listing.Load().lowerDirFd(n.u, n.dir.lowerDirs, e.layer())
	if err != nil {
		return nil, fmt.Errorf("open lower dir: %w", err)
	}
	err = unix.Fstatat(dirfd, name, &ci.st, unix.AT_SYMLINK_NOFOLLOW)
	if mustClose {
		unix.Close(dirfd)
	}
	if err != nil {
		return nil, fmt.Errorf("stat lower %q: %w", ref.rel, err)
	}
	ci.ino = l.foldIno(ci.st.Ino)
	if e.noXattrs {
		ci.xattrs = knownXattrNames(nil)
	}
	if e.mode() == unix.S_IFDIR {
		// The same path as ref's: one string for both.
		ci.dirs = lowerDirSet{rel: ref.rel, layers: e.dirLayers()}
	}
	n.u.checkIndex(ci)
	return ci, nil
}

// newChild finds, by inode number, the live node for a looked-up name, or
// makes one: rename and remove must act on the very node the kernel knows.
// forKernel counts a kernel reference in the same step (see kernel.go),
// for a node that goes into a reply.
func (n *node) newChild(name string, ci *childInfo, forKernel bool) *node {
	kind := ci.st.Mode & unix.S_IFMT
	n.u.nodesMu.Lock()
	if old := n.u.nodes[ci.ino]; old != nil && old.kind == kind {
		if forKernel {
			n.u.refLocked(old)
		}
		n.u.nodesMu.Unlock() // a leaf lock: not held while taking old.mu
		old.adoptName(n, name)
		return old
	}
	defer n.u.nodesMu.Unlock()
	fresh := &node{
		u: n.u, kind: kind, ino: ci.ino, parent: n, name: name,
		inUpper: ci.inUpper || ci.index, lower: ci.lower, hasLower: ci.hasLower, metacopy: ci.metacopy,
		index: ci.index, lowerNames: ci.lowerNames, anonFd: -1,
	}
	if kind == unix.S_IFDIR {
		fresh.dir = &dirState{lowerDirs: ci.dirs, upperOpaque: ci.opaque}
	} else if base, ok := childOf(n.lowerSet().rel, ci.lower.rel); ok && base == name {
		fresh.lower.rel, fresh.relFromName = "", true
	}
	_, fresh.twin = n.u.twins[ci.ino]
	if !ci.index {
		// An index entry's xattrs are those of its copy in the work dir.
		fresh.xattrs = ci.xattrs
	}
	n.u.nodes[ci.ino] = fresh
	if forKernel {
		n.u.refLocked(fresh)
	}
	return fresh
}

// objectRemoved takes the node of a removed upper object out of the table.
// The kernel may hold that node a while yet (its FORGET can come late,
// over FUSE io_uring especially), and the upper filesystem may give the
// inode number to the next object it makes; that object must get a node
// of its own, not the removed one's. Call it only when the object is gone:
// not for one name of several hard links.
//
// gone is the node the kernel knows for the removed name, if any, and st
// the object's attributes just before: as on overlayfs, a stat through a
// descriptor the kernel still holds (O_PATH, a working directory) shows
// them with no link, until the kernel forgets the node.
func (u *union) objectRemoved(ino uint64, gone *node, st *unix.Stat_t) {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	if gone != nil {
		last := *st
		last.Nlink = 0
		last.Ctim = unix.NsecToTimespec(time.Now().UnixNano())
		u.removed[gone] = last
	}
	delete(u.nodes, ino)
	// Its superseded nodes no longer stand for anything in the table: the
	// next node of this number is another object's.
	if u.anySuperseded.Load() {
		for old, oldIno := range u.superseded {
			if oldIno == ino {
				delete(u.superseded, old)
			}
		}
	}
	delete(u.twins, ino)
}

// removedStat returns the last attributes of n's object if it was
// removed (objectRemoved).
func (u *union) removedStat(n *node) (unix.Stat_t, bool) {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	st, ok := u.removed[n]
	return st, ok
}

// nodeFor returns the live node with inode number ino, if any.
func (n *node) nodeFor(ino uint64) *node {
	n.u.nodesMu.Lock()
	defer n.u.nodesMu.Unlock()
	return n.u.nodes[ino]
}

// supersede retires a node from the inode table so the next lookup makes a
// new kernel inode for the same object (see handOut). Caller holds n.mu.
func (u *union) supersede(n *node) {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	if u.nodes[n.ino] == n {
		delete(u.nodes, n.ino)
	}
	u.twins[n.ino] = struct{}{}
	u.superseded[n] = n.ino
	u.anySuperseded.Store(true)
	n.twin = true
	u.notifyContent(n) // drop the attributes the kernel holds now
}

// current is the node that stands for n's object now: n itself, or for a
// superseded node the one in the table. The kernel still sends requests to
// a superseded node by its node id (a stat through a dentry it keeps); its
// own name and state stop following the object once the successor is
// renamed, linked or copied up, so everything but I/O on handles it
// already opened goes to the successor. Caller holds no node's mu.
func (n *node) current() *node {
	if !n.u.anySuperseded.Load() {
		return n
	}
	n.u.nodesMu.Lock()
	defer n.u.nodesMu.Unlock()
	if _, ok := n.u.superseded[n]; !ok {
		return n
	}
	if c := n.u.nodes[n.ino]; c != nil && c.kind == n.kind {
		return c
	}
	return n
}

// adoptName gives a known node the name it was just found under when its
// recorded name no longer leads to it (it was unlinked or moved), and
// records it as an alias otherwise (a hard link). Caller holds u.treeMu
// shared; the parent pointer is only replaced when the node had lost it.
func (n *node) adoptName(parent *node, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.isRoot():
	case n.parent == nil:
		n.parent, n.name = parent, name
	case n.parent != parent || n.name != name:
		n.u.addAlias(n, parent, name)
	}
}

// isRoot reports whether n is the mount's root directory.
func (n *node) isRoot() bool { return n == n.u.root }

// forgetLocked takes a node the kernel no longer holds out of the tables.
// Caller holds u.nodesMu.
func (u *union) forgetLocked(n *node) {
	u.freeIDLocked(n)
	if u.nodes[n.ino] == n {
		delete(u.nodes, n.ino)
	}
	delete(u.superseded, n)
	delete(u.removed, n)
	delete(u.aliases, n)
}

// release closes the descriptors a node caches, once it is out of the
// tables, and returns how many names its listing held (garbage now).
func (n *node) release() (listed int) {
	n.dirFd().drop(n.u)
	n.mu.Lock()
	defer n.mu.Unlock()
	if ll := n.lowerListingIfBuilt(); ll != nil {
		ll.closeDirFds(n.u)
		listed = ll.size()
	}
	if n.anonFd >= 0 {
		unix.Close(int(n.anonFd))
		n.anonFd = -1
	}
	n.dropIdleBackingLocked()
	return listed
}

// fillEntry and fillAttr translate a backing stat into what the kernel sees.
// fillEntry takes n.mu; fillAttr's caller holds it.
func (n *node) fillEntry(st *unix.Stat_t, out *fuse.EntryOut) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fillAttr(st, &out.Attr)
	out.SetAttrTimeout(n.attrValidity())
}

func (n *node) fillAttr(st *unix.Stat_t, a *fuse.Attr) {
	a.FromStat((*syscall.Stat_t)(unsafe.Pointer(st)))
	a.Ino = n.ino
	if n.index && a.Nlink > 0 {
		a.Nlink = a.Nlink - 1 + n.lowerNames
	}
	lower := n.lowerSet()
	merged := n.inUpper && !n.opaque() && !lower.empty() || len(lower.layers) > 1
	if n.kind == unix.S_IFDIR && merged {
		// overlayfs does not count subdirectories of a merged
		// directory; nlink 1 tells find and others not to rely on it.
		a.Nlink = 1
	}
}

// statLocked stats the object behind the node: the upper entry if there is
// one, else the lower one. Caller holds u.treeMu shared and n.mu.
func (n *node) statLocked(st *unix.Stat_t) error {
	if n.inUpper {
		if err := n.statUpper(st); err != nil {
			if last, ok := n.u.removedStat(n); ok && n.parent == nil {
				*st = last
				return nil
			}
			return err
		}
		if n.metacopy {
			n.lowerBlocks(st)
		}
		return nil
	}
	return n.statLower(st)
}

// statUpper stats the node's upper object. Caller holds u.treeMu shared
// and n.mu.
func (n *node) statUpper(st *unix.Stat_t) error {
	statAt := func(dirfd int, name string) error {
		if name == "" {
			return unix.Fstat(dirfd, st)
		}
		if err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("stat upper: %w", err)
		}
		return nil
	}
	if done, err := n.withCachedUpperParent(statAt); done {
		return err
	}
	dirfd, name, err := n.openObject()
	if err != nil {
		return fmt.Errorf("open upper parent: %w", err)
	}
	defer unix.Close(dirfd)
	return statAt(dirfd, name)
}

// statLower stats the node's lower object. A directory listed already
// answers from its listing, without a system call (dirAttr). Caller holds
// u.treeMu shared and n.mu.
func (n *node) statLower(st *unix.Stat_t) error {
	if n.parent == nil && !n.hasLower {
		return unix.Fstat(n.u.lowers[0].rootFd, st)
	}
	if ll := n.lowerListingIfBuilt(); ll != nil && n.lowerRel() == n.dir.lowerDirs.rel &&
		ll.top.statOf(n.lower.layer, st) {
		return nil
	}
	if done, err := n.statLowerInParent(st); done {
		return err
	}
	l := n.u.lowers[n.lower.layer]
	rel := n.lowerRel()
	fd, err := l.open(rel, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open lower %q: %w", rel, err)
	}
	defer unix.Close(fd)
	return unix.Fstat(fd, st)
}

// statLowerInParent stats the node's lower object through the descriptor
// its parent's listing keeps of that lower directory, one system call
// instead of walking the path again (a warm find stats every directory
// once: the cold pass's readdir made the kernel drop its atime). It
// reports false when the parent keeps none, or the object does not sit
// under the parent's lower directory by the same name (a redirect).
// Caller holds u.treeMu shared and n.mu.
func (n *node) statLowerInParent(st *unix.Stat_t) (bool, error) {
	p := n.parent
	if p == nil {
		return false, nil
	}
	ll := p.lowerListingIfBuilt()
	if ll == nil {
		return false, nil
	}
	base, ok := n.name, true
	if !n.relFromName {
		base, ok = childOf(p.dir.lowerDirs.rel, n.lower.rel)
	}
	if !ok {
		return false, nil
	}
	var err error
	done := ll.withLayerDirFd(n.lower.layer, func(fd int) {
		err = unix.Fstatat(fd, base, st, unix.AT_SYMLINK_NOFOLLOW)
	})
	return done, err
}

// childOf returns the name rel has in the directory dirRel, when rel is
// an entry of it.
func childOf(dirRel, rel string) (string, bool) {
	if dirRel != "" {
		if len(rel) <= len(dirRel) || rel[len(dirRel)] != '/' || !strings.HasPrefix(rel, dirRel) {
			return "", false
		}
		rel = rel[len(dirRel)+1:]
	}
	return rel, rel != "" && !strings.Contains(rel, "/")
}

// lowerBlocks reports the block count of a metacopy file's data, as
// overlayfs does, so du shows where the space is.
func (n *node) lowerBlocks(st *unix.Stat_t) {
	var lst unix.Stat_t
	if n.hasLower && n.statLower(&lst) == nil {
		st.Blocks = lst.Blocks
	}
}

func (n *node) Getattr(ctx context.Context, f *file, out *fuse.AttrOut) syscall.Errno {
	if c := n.current(); c != n {
		return c.Getattr(ctx, f, out)
	}
	if f != nil {
		var st unix.Stat_t
		if errno := f.withFd(func(fd int) error { return unix.Fstat(fd, &st) }); errno != 0 {
			return errno
		}
		n.mu.Lock()
		current := f.upper || !n.inUpper
		if current {
			n.fillAttr(&st, &out.Attr)
			n.attrTimeout(out)
		}
		n.mu.Unlock()
		if current {
			return 0
		}
		// A handle opened on the lower file before a copy-up: the
		// node's attributes now come from the upper copy.
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	var st unix.Stat_t
	if err := n.statLocked(&st); err != nil {
		return toErrno(err)
	}
	n.fillAttr(&st, &out.Attr)
	n.attrTimeout(out)
	return 0
}

// attrValidity is how long the kernel may keep the node's attributes,
// in every reply that carries them (entries, GETATTR, SETATTR). An object
// with two kernel inodes (a superseded node and its successor, twin) gets
// zero: a change through one would leave the other's cached attributes
// stale. Not even a nanosecond: the kernel rounds any nonzero timeout up
// to a whole jiffy (1-10 ms), and a stat of one name right after a chmod
// through the other got the old mode.
func (n *node) attrValidity() time.Duration {
	if n.twin {
		return 0
	}
	return cacheTimeout
}

// attrTimeout sets how long the kernel may keep attributes it gets from
// GETATTR and SETATTR replies (a SETATTR answer without one makes the
// kernel ask again at once).
func (n *node) attrTimeout(out *fuse.AttrOut) { out.SetTimeout(n.attrValidity()) }

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if c := n.current(); c != n {
		return c.Readlink(ctx)
	}
	// Most targets are short: a small buffer first, and the longest a
	// target can be only if that one fills up (it may have cut the
	// target short).
	for _, size := range []int{128, unix.PathMax} {
		buf := make([]byte, size)
		var sz int
		err := n.withObject(currentObject, func(dirfd int, name string) error {
			var err error
			sz, err = unix.Readlinkat(dirfd, name, buf)
			return err
		})
		if err != nil {
			return nil, toErrno(err)
		}
		if sz < size {
			return buf[:sz], 0
		}
	}
	return nil, syscall.ENAMETOOLONG
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	n.u.flushRetired() // removed files count as free space at once
	fd := n.u.lowers[0].rootFd
	if n.u.upper != nil {
		fd = n.u.upper.rootFd
	}
	var st syscall.Statfs_t
	if err := syscall.Fstatfs(fd, &st); err != nil {
		return toErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}
