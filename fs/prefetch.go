package fs

import (
	"cmp"
	"container/list"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Directory prefetch.
//
// A walker (find, ls -R, du, a container runtime scanning an image) lists a
// directory and then goes into its subdirectories one after the other. On
// a cold cache each of those listings waits on the disk twice: for the
// lower directories' blocks (getdents) and, because the kernel asks with
// READDIRPLUS, for every entry's inode (fstatat). The walker is serial, so
// the daemon would sit idle between requests while the next directory's
// blocks are still on disk.
//
// So when a directory's merged lower listing is built for the view, the
// prefetcher builds its subdirectories' listings in the background and
// stats their entries (the kernel keeps the inodes), one level ahead of
// the walker. A merged lower listing is a pure function of its lowerDirSet
// (lower layers never change), so a listing built ahead is exactly the one
// the node would build; the node takes it instead of reading the layers
// again. Nothing else is cached: upper entries are always read fresh.
//
// A worker builds a listing as a lookup would (probe.go): a huge layer
// directory is left unread, so that a lookup arriving meanwhile waits for
// the small layers only. The whole merge of such a partial listing, and of
// one a node built for a lookup, is then built by the workers before any
// other work (wantWhole), at most maxPendingWhole waiting, and handed to
// the partial listing, from which the node takes it.
//
// Bounds: pending work is a stack (a depth-first walker goes next where
// the last listing pointed) of at most maxPendingDirs sets, dropping the
// oldest; finished listings wait for their node up to maxReadyEntries
// entries in all, oldest dropped first; a directory with more than
// maxWarmEntries entries is listed but its entries are not stat'ed (a
// huge layer directory is usually looked up by name, not walked).
// Workers stop before the layers close (union.close), so no worker ever
// resolves a path against a descriptor number that was reused.
//
// Lock order: prefetcher.mu is a leaf; a node's mu may be held while
// taking it (lowerListingLocked), never the other way round.
const (
	prefetchWorkers = 2
	maxPendingDirs  = 1024
	maxReadyEntries = 1 << 16
	maxWarmEntries  = 1024
	maxPendingWhole = 64
)

type prefetcher struct {
	u    *union
	mu   sync.Mutex
	wake *sync.Cond
	// pending are sets to build, the most recently asked for last.
	pending []lowerDirSet
	// wholes are partial listings whose whole merge is wanted
	// (wantWhole), built next (before anything pending), oldest first.
	wholes []*partialMerge
	// building maps a set's key to a channel closed when its build ends.
	building map[string]chan struct{}
	// ready are finished listings not yet taken; readyOrder holds their
	// keys oldest first, readyEntries the entries they hold in all.
	ready        map[string]*list.Element // of *readyListing
	readyOrder   list.List
	readyEntries int
	stopped      bool
	workers      sync.WaitGroup
}

type readyListing struct {
	key  string
	ll   *lowerListing
	used []int
}

func newPrefetcher(u *union) *prefetcher {
	p := &prefetcher{u: u, building: map[string]chan struct{}{}, ready: map[string]*list.Element{}}
	p.wake = sync.NewCond(&p.mu)
	for i := 0; i < prefetchWorkers; i++ {
		p.workers.Add(1)
		go p.work()
	}
	return p
}

// stop ends the workers and waits for them; pending work is dropped.
func (p *prefetcher) stop() {
	p.mu.Lock()
	p.stopped = true
	p.pending = nil
	for _, pm := range p.wholes {
		if pm.claimWhole(wholeQueued) {
			pm.endWhole(nil)
		}
	}
	p.wholes = nil
	p.wake.Broadcast()
	p.mu.Unlock()
	p.workers.Wait()
}

// dirSetKey names a lowerDirSet: its path and the layers it spans.
func dirSetKey(s lowerDirSet) string {
	var b strings.Builder
	b.WriteString(s.rel)
	for _, l := range s.layers {
		b.WriteByte(0)
		b.WriteString(strconv.Itoa(l))
	}
	return b.String()
}

// listing returns the merged listing of dirs: the prefetched one if a
// worker built it (waiting if one is building it now), else one built
// here. Either way the subdirectories are then queued for prefetch.
// forLookup: one built here is built for a lookup (partial when a layer
// directory is huge: probe.go). One built ahead is taken either way; a
// caller that needs every name takes a partial one's whole merge
// (lowerListingLocked).
func (p *prefetcher) listing(dirs lowerDirSet, forLookup bool) (*lowerListing, []int, error) {
	key := dirSetKey(dirs)
	p.mu.Lock()
	if done, ok := p.building[key]; ok {
		p.mu.Unlock()
		<-done
		p.mu.Lock()
	}
	if got := p.takeReadyLocked(key); got != nil {
		p.mu.Unlock()
		p.queueChildren(dirs, got.ll)
		p.wantWhole(got.ll)
		return got.ll, got.used, nil
	}
	// Built here; workers skip the set meanwhile.
	done := make(chan struct{})
	p.building[key] = done
	p.mu.Unlock()
	build := p.u.buildLowerListing
	if forLookup {
		build = p.u.buildLookupListing
	}
	ll, used, err := build(dirs)
	p.mu.Lock()
	delete(p.building, key)
	p.mu.Unlock()
	close(done)
	if err != nil {
		return nil, nil, err
	}
	p.queueChildren(dirs, ll)
	p.wantWhole(ll)
	return ll, used, nil
}

// wantWhole has the whole merge of a partial listing built in the
// background, once (probe.go): lookups probe until it is there, then
// search it. A listing of the directory that cannot wait builds it
// itself if no worker has started it yet.
func (p *prefetcher) wantWhole(ll *lowerListing) {
	pm := ll.partial
	if pm == nil || !pm.wholeState.CompareAndSwap(wholeNotAsked, wholeQueued) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		if pm.claimWhole(wholeQueued) {
			pm.endWhole(nil)
		}
		return
	}
	p.wholes = append(p.wholes, pm)
	if over := len(p.wholes) - maxPendingWhole; over > 0 {
		for _, dropped := range p.wholes[:over] {
			if dropped.claimWhole(wholeQueued) {
				dropped.endWhole(nil)
			}
		}
		p.wholes = append(p.wholes[:0], p.wholes[over:]...)
	}
	p.wake.Broadcast()
}

// queueChildren asks for the listings of the subdirectories of a listing
// just handed to a node.
func (p *prefetcher) queueChildren(dirs lowerDirSet, ll *lowerListing) {
	var subdirs []string
	for i, name := range ll.names {
		if e := &ll.ents[i]; e.mode() == unix.S_IFDIR && len(e.dirLayers()) > 0 {
			subdirs = append(subdirs, name)
		}
	}
	if len(subdirs) == 0 {
		return
	}
	// Pushed in reverse readdir (cookie) order, so the stack hands out
	// first the directory a walker reading the listing reaches first.
	slices.SortFunc(subdirs, func(a, b string) int { return cmp.Compare(nameCookie(b), nameCookie(a)) })
	sets := make([]lowerDirSet, len(subdirs))
	for i, name := range subdirs {
		sets[i] = dirs.child(name, ll.entry(name).dirLayers())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	p.pending = append(p.pending, sets...)
	if over := len(p.pending) - maxPendingDirs; over > 0 {
		p.pending = append(p.pending[:0], p.pending[over:]...)
	}
	p.wake.Broadcast()
}

func (p *prefetcher) work() {
	defer p.workers.Done()
	for {
		whole, dirs, key, done, ok := p.next()
		if !ok {
			return
		}
		if whole != nil {
			if whole.claimWhole(wholeQueued) {
				ll, _, err := p.u.buildLowerListing(whole.dirs)
				if err != nil {
					ll = nil
				}
				whole.endWhole(ll)
			}
			continue
		}
		// Built for a lookup: a huge layer directory is probed rather
		// than read ahead, since a lookup would wait for the read.
		ll, used, err := p.u.buildLookupListing(dirs)
		if err == nil && ll.partial == nil && ll.size() <= maxWarmEntries {
			p.warmInodes(dirs, ll)
		}
		p.mu.Lock()
		delete(p.building, key)
		if err == nil && !p.stopped {
			p.addReadyLocked(&readyListing{key: key, ll: ll, used: used})
		}
		p.mu.Unlock()
		close(done)
		if err == nil {
			p.wantWhole(ll) // a walker that lists it will wait for less
		}
	}
}

// next waits for work: the oldest partial listing whose whole merge is
// wanted (whole), else a set to build that is neither built nor being
// built.
func (p *prefetcher) next() (whole *partialMerge, dirs lowerDirSet, key string, done chan struct{}, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if len(p.wholes) > 0 && !p.stopped {
			whole = p.wholes[0]
			p.wholes = p.wholes[1:]
			return whole, lowerDirSet{}, "", nil, true
		}
		for len(p.pending) > 0 && !p.stopped {
			dirs := p.pending[len(p.pending)-1]
			p.pending = p.pending[:len(p.pending)-1]
			key := dirSetKey(dirs)
			if _, busy := p.building[key]; busy {
				continue
			}
			if _, done := p.ready[key]; done {
				continue
			}
			done := make(chan struct{})
			p.building[key] = done
			return nil, dirs, key, done, true
		}
		if p.stopped {
			return nil, lowerDirSet{}, "", nil, false
		}
		p.wake.Wait()
	}
}

// warmInodes stats every entry where the view will find it, so the
// READDIRPLUS that lists the directory finds the inodes in memory (only
// the subdirectories while files are listed without attributes), and
// marks the entries that have no xattrs (ls -l asks every file for
// security.selinux and its ACLs; their nodes then answer from memory).
// The listing is still the worker's own, so its entries may change.
func (p *prefetcher) warmInodes(dirs lowerDirSet, ll *lowerListing) {
	fds := map[int]int{}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	var st unix.Stat_t
	files := p.u.plus.filesWanted()
	for i, name := range ll.names {
		e := &ll.ents[i]
		if !files && e.mode() != unix.S_IFDIR {
			continue // listed without attributes, so not stat'ed
		}
		li := e.layer()
		fd, ok := fds[li]
		if !ok {
			var err error
			if fd, err = p.u.lowers[li].openDir(dirs.rel); err != nil {
				fd = -1
			}
			fds[li] = fd
		}
		if fd < 0 || unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		if size, err := listxattrAt(fd, name, nil); err == nil && size == 0 {
			e.noXattrs = true
		}
	}
}

func (p *prefetcher) addReadyLocked(r *readyListing) {
	p.ready[r.key] = p.readyOrder.PushBack(r)
	p.readyEntries += r.ll.size()
	for p.readyEntries > maxReadyEntries && p.readyOrder.Len() > 1 {
		p.takeReadyLocked(p.readyOrder.Front().Value.(*readyListing).key)
	}
}

// takeReadyLocked removes the finished listing of key and returns it, or
// nil if there is none.
func (p *prefetcher) takeReadyLocked(key string) *readyListing {
	el, ok := p.ready[key]
	if !ok {
		return nil
	}
	r := p.readyOrder.Remove(el).(*readyListing)
	delete(p.ready, key)
	p.readyEntries -= r.ll.size()
	return r
}
