package fs

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeTree creates files (content = path) and directories (names ending
// in "/") under root.
func writeTree(t *testing.T, root string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		full := filepath.Join(root, p)
		if p[len(p)-1] == '/' {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// prefetchStack is three lower layers whose directories merge, with an
// OCI whiteout, an opaque directory and a file that carries an xattr.
func prefetchStack(t *testing.T) *union {
	t.Helper()
	top, mid, bottom := t.TempDir(), t.TempDir(), t.TempDir()
	writeTree(t, bottom, "d/old", "d/gone", "d/sub/deep", "o/hidden", "plain/x")
	writeTree(t, mid, "d/mid", "d/sub/midfile", "o/.wh..wh..opq", "o/shown")
	writeTree(t, top, "d/top", "d/.wh.gone", "d/tagged", "e/")
	if err := unix.Setxattr(filepath.Join(top, "d/tagged"), "user.tag", []byte("v"), 0); err != nil {
		t.Skipf("the test directory's filesystem has no user xattrs: %v", err)
	}
	u, err := newUnion(Config{Lowers: []string{top, mid, bottom}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.close)
	return u
}

// waitReady waits until the prefetcher holds a finished listing of dirs.
// The bound only turns a hang into a failure; nothing is timed.
func waitReady(t *testing.T, p *prefetcher, dirs lowerDirSet) {
	t.Helper()
	key := dirSetKey(dirs)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		p.mu.Lock()
		_, ok := p.ready[key]
		p.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatalf("no prefetched listing of %q", dirs.rel)
}

// A listing built ahead is the very listing the node would build itself,
// and listing a directory queues its subdirectories.
func TestPrefetchedListingEqualsBuiltOne(t *testing.T) {
	u := prefetchStack(t)
	root := lowerDirSet{rel: "", layers: []int{0, 1, 2}}
	rootList, _, err := u.prefetch.listing(root, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d", "o", "plain"} {
		e := rootList.entry(name)
		if e == nil || e.mode() != unix.S_IFDIR {
			t.Fatalf("root listing lacks directory %q: %+v", name, e)
		}
		child := root.child(name, e.dirLayers())
		waitReady(t, u.prefetch, child)
		got, gotUsed, err := u.prefetch.listing(child, true)
		if err != nil {
			t.Fatal(err)
		}
		want, wantUsed, err := u.buildLowerListing(child)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got.ents {
			got.ents[i].noXattrs = false // only the prefetcher learns it
		}
		// Each read of the directory may move its atime (relatime, while
		// the atime is not after the mtime).
		got.top.atime = want.top.atime
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotUsed, wantUsed) {
			t.Errorf("%s: prefetched %+v (layers %v), built %+v (layers %v)", name, got, gotUsed, want, wantUsed)
		}
	}
}

// Entries without xattrs are marked so; one with an xattr is not.
func TestPrefetchMarksEntriesWithoutXattrs(t *testing.T) {
	u := prefetchStack(t)
	root := lowerDirSet{rel: "", layers: []int{0, 1, 2}}
	rootList, _, err := u.prefetch.listing(root, false)
	if err != nil {
		t.Fatal(err)
	}
	d := root.child("d", rootList.entry("d").dirLayers())
	waitReady(t, u.prefetch, d)
	ll, _, err := u.prefetch.listing(d, true)
	if err != nil {
		t.Fatal(err)
	}
	if ll.entry("gone") != nil {
		t.Error("a whited-out name is listed")
	}
	if ll.entry("tagged").noXattrs {
		t.Error("a file with user.tag is marked as having no xattrs")
	}
	for _, name := range []string{"top", "mid", "old"} {
		if !ll.entry(name).noXattrs {
			t.Errorf("%s has no xattrs but is not marked", name)
		}
	}
}

// A listing taken once is gone from the prefetcher (a node owns it), and
// the ready listings stay within their bound.
func TestPrefetchHandsOutOnceAndStaysBounded(t *testing.T) {
	u := prefetchStack(t)
	p := u.prefetch
	root := lowerDirSet{rel: "", layers: []int{0, 1, 2}}
	rootList, _, err := p.listing(root, false)
	if err != nil {
		t.Fatal(err)
	}
	d := root.child("d", rootList.entry("d").dirLayers())
	waitReady(t, p, d)
	if _, _, err := p.listing(d, true); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	_, still := p.ready[dirSetKey(d)]
	p.mu.Unlock()
	if still {
		t.Error("a taken listing is still held")
	}

	p.stop() // no worker adds listings from here on
	for i := 0; i < 10; i++ {
		p.mu.Lock()
		p.addReadyLocked(&readyListing{key: string(rune('a' + i)), ll: &lowerListing{names: make([]string, maxReadyEntries/4)}})
		entries, inOrder, inMap := p.readyEntries, p.readyOrder.Len(), len(p.ready)
		p.mu.Unlock()
		if entries > maxReadyEntries || inOrder != inMap {
			t.Fatalf("after %d adds: %d entries held (bound %d), %d in order, %d in map", i+1, entries, maxReadyEntries, inOrder, inMap)
		}
	}
}

// stop ends the workers even with work queued, so the layers may close.
func TestPrefetchStopEndsWorkers(t *testing.T) {
	u := prefetchStack(t)
	sets := make([]lowerDirSet, 0, maxPendingDirs*2)
	for i := 0; i < cap(sets); i++ {
		sets = append(sets, lowerDirSet{rel: "d", layers: []int{0, 1, i % 3}})
	}
	u.prefetch.mu.Lock()
	u.prefetch.pending = append(u.prefetch.pending, sets...)
	u.prefetch.wake.Broadcast()
	u.prefetch.mu.Unlock()
	u.prefetch.stop()
	u.prefetch.mu.Lock()
	defer u.prefetch.mu.Unlock()
	if len(u.prefetch.pending) != 0 || len(u.prefetch.building) != 0 {
		t.Errorf("after stop: %d pending, %d building", len(u.prefetch.pending), len(u.prefetch.building))
	}
}
