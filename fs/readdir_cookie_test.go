package fs

import (
	"fmt"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Cookies stay clear of 0 and the dot entries, fit in 63 bits, and are a
// function of the name alone.
func TestNameCookieRange(t *testing.T) {
	for i := 0; i < 100000; i++ {
		name := fmt.Sprintf("name-%d", i)
		c := nameCookie(name)
		if c <= dotDotCookie || c >= 1<<63 {
			t.Fatalf("nameCookie(%q) = %d, outside (2, 2^63)", name, c)
		}
		if c != nameCookie(name) {
			t.Fatalf("nameCookie(%q) not stable", name)
		}
	}
}

// A read that continues after a cookie returns exactly the names above
// it, also when the continuation comes from a snapshot taken after names
// were added and removed: no name that stayed is repeated or skipped.
func TestSeekdirContinuesAcrossSnapshots(t *testing.T) {
	snapshot := func(names []string) *dirHandle {
		var ents []fuse.DirEntry
		for _, n := range names {
			ents = append(ents, fuse.DirEntry{Name: n, Off: nameCookie(n)})
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].Off < ents[j].Off })
		return &dirHandle{entries: ents}
	}
	var before []string
	for i := 0; i < 200; i++ {
		before = append(before, fmt.Sprintf("f%03d", i))
	}
	old := snapshot(before)
	// Read the first half from the old snapshot.
	seen := map[string]int{}
	var last uint64
	for _, e := range old.entries[:100] {
		seen[e.Name]++
		last = e.Off
	}
	// The directory changes: every third name goes, new names come.
	var after []string
	removed := map[string]bool{}
	for i, n := range before {
		if i%3 == 0 {
			removed[n] = true
			continue
		}
		after = append(after, n)
	}
	for i := 0; i < 50; i++ {
		after = append(after, fmt.Sprintf("new%02d", i))
	}
	fresh := snapshot(after)
	if errno := fresh.seek(last); errno != 0 {
		t.Fatal(errno)
	}
	for _, e := range fresh.entries[fresh.pos:] {
		seen[e.Name]++
	}
	for _, n := range before {
		if removed[n] {
			continue
		}
		if seen[n] != 1 {
			t.Errorf("%s seen %d times, want once", n, seen[n])
		}
	}
}
