package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// A merge over more layers than are read at once gives the same listing
// a top-down reading would: names from every layer down to the first
// opaque directory and none below it, whiteouts hiding what is under them,
// and the layers merged reported in stack order.
func TestDeepMergeStopsAtOpaqueLayer(t *testing.T) {
	const depth = 3*scanParallelism + 5
	const opaqueAt = 2*scanParallelism + 1
	lowers := make([]string, depth)
	var want []string
	for i := range lowers {
		lowers[i] = t.TempDir()
		writeTree(t, lowers[i], fmt.Sprintf("d/f%03d", i), "d/shared")
		switch {
		case i%7 == 3:
			// This layer's directory is missing: the merge skips it.
			if err := os.RemoveAll(filepath.Join(lowers[i], "d")); err != nil {
				t.Fatal(err)
			}
			continue
		case i == 5:
			// A whiteout for a name of the layer below.
			writeTree(t, lowers[i], fmt.Sprintf("d/.wh.f%03d", i+1))
		case i == opaqueAt:
			writeTree(t, lowers[i], "d/.wh..wh..opq")
		}
		if i <= opaqueAt && i != 6 {
			want = append(want, fmt.Sprintf("f%03d", i))
		}
	}
	want = append(want, "shared")
	slices.Sort(want)
	u, err := newUnion(Config{Lowers: lowers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.close)
	all := make([]int, depth)
	for i := range all {
		all[i] = i
	}
	ll, used, err := u.buildLowerListing(lowerDirSet{rel: "d", layers: all})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ll.names, want) {
		t.Errorf("names = %v\nwant %v", ll.names, want)
	}
	var wantUsed []int
	for i := 0; i <= opaqueAt; i++ {
		if i%7 != 3 {
			wantUsed = append(wantUsed, i)
		}
	}
	if !reflect.DeepEqual(used, wantUsed) {
		t.Errorf("layers merged = %v, want %v", used, wantUsed)
	}
	if e := ll.entry("shared"); e == nil || e.layer() != 0 {
		t.Errorf("shared comes from %+v, want the top layer", e)
	}
	if e := ll.entry(fmt.Sprintf("f%03d", opaqueAt)); e == nil || e.layer() != opaqueAt {
		t.Errorf("f%03d comes from %+v, want layer %d", opaqueAt, e, opaqueAt)
	}
}
