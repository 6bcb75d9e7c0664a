package fs

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// referenceMerge is the merge rule stated the plain way: layers top down,
// each name decided by the first layer that shows it unless a whiteout
// above hid it, a layer's entries before its whiteouts, and the result
// sorted at the end. buildLowerListing must agree with it.
func referenceMerge(t *testing.T, u *union, dirs lowerDirSet) ([]string, []lowerEntry, []int) {
	t.Helper()
	type decided struct {
		name   string
		e      mergeItem
		layer  int
		dirs   []int
		closed bool
	}
	var order []*decided
	byName := map[string]*decided{}
	hidden := map[string]bool{}
	var used []int
	for _, li := range dirs.layers {
		scan, err := u.scanLowerDir(lowerRef{layer: li, rel: dirs.rel}, false, 0)
		if err != nil {
			continue // every error the test makes is a missing directory
		}
		used = append(used, li)
		for pass := range 2 {
			for _, it := range scan.items {
				if it.whiteout != (pass == 1) {
					continue
				}
				d := byName[it.name]
				switch {
				case it.whiteout && d == nil:
					hidden[it.name] = true
				case it.whiteout:
					if d.layer != li {
						d.closed = true
					}
				case hidden[it.name]:
				case d == nil:
					d = &decided{name: it.name, e: it, layer: li}
					if it.mode == unix.S_IFDIR {
						d.dirs = []int{li}
					}
					byName[it.name] = d
					order = append(order, d)
				case d.e.mode != unix.S_IFDIR || d.closed:
				case it.mode == unix.S_IFDIR:
					d.dirs = append(d.dirs, li)
				default:
					d.closed = true
				}
			}
		}
		if scan.opaque {
			break
		}
	}
	slices.SortFunc(order, func(a, b *decided) int { return cmpString(a.name, b.name) })
	var names []string
	var ents []lowerEntry
	for _, d := range order {
		names = append(names, d.name)
		e := lowerEntry{ino: d.e.ino, top: uint16(d.layer), typ: uint16(d.e.mode)}
		if d.dirs != nil {
			dl := d.dirs
			e.dirs = &dl
		}
		ents = append(ents, e)
	}
	return names, ents, used
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// mergePool is the names random stacks hold. They share long prefixes so
// that sort keys tie and the full names decide; "longname-0" and
// "longname-00" differ only in length. The last is long enough that its
// OCI whiteout name cannot exist.
var mergePool = []string{"a", "b", "ab", "longname-0", "longname-00", "longname-1", "longname-10", "z", "zz", "m", strings.Repeat("q", 253)}

// randomMergeStack writes the layers of a random stack of one directory,
// "d", topmost first: files, directories, symlinks, all three kinds of
// whiteout (and a whiteout beside an entry of the same name in one
// layer), opaque directories, directories marked to hold xattr whiteouts,
// and layers without the directory.
func randomMergeStack(t *testing.T, rng *rand.Rand) []string {
	t.Helper()
	lowers := make([]string, 1+rng.IntN(7))
	for i := range lowers {
		lowers[i] = t.TempDir()
		d := filepath.Join(lowers[i], "d")
		if rng.IntN(8) == 0 {
			continue // this layer lacks the directory
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(10) == 0 {
			writeTree(t, lowers[i], "d/.wh..wh..opq")
		}
		xwhiteouts := rng.IntN(4) == 0
		if xwhiteouts {
			if err := unix.Setxattr(d, "user.overlay.opaque", []byte("x"), 0); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range mergePool {
			p := filepath.Join(d, name)
			var err error
			switch rng.IntN(9) {
			case 0, 1:
				err = os.WriteFile(p, nil, 0o644)
			case 2, 3:
				err = os.Mkdir(p, 0o755)
			case 4:
				err = os.Symlink("x", p)
			case 5:
				err = unix.Mknod(p, unix.S_IFCHR, 0)
			case 6:
				if len(name) > 250 {
					continue
				}
				err = os.WriteFile(filepath.Join(d, ".wh."+name), nil, 0o644)
				if err == nil && rng.IntN(2) == 0 {
					err = os.Mkdir(p, 0o755) // and an entry beside it
				}
			case 7:
				// An xattr whiteout: one only where the directory
				// is marked for them.
				if err = os.WriteFile(p, nil, 0o644); err == nil {
					err = unix.Setxattr(p, "user.overlay.whiteout", []byte("y"), 0)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return lowers
}

// wholeStack is the set of every layer of a stack of depth layers.
func wholeStack(depth int) lowerDirSet {
	all := make([]int, depth)
	for i := range all {
		all[i] = i
	}
	return lowerDirSet{rel: "d", layers: all}
}

// randomMergeUnion opens a union of cfg over a random stack
// (randomMergeStack) and returns it with the set of its directory "d",
// that set's whole merge and the layers merged.
func randomMergeUnion(t *testing.T, rng *rand.Rand, cfg Config) (*union, lowerDirSet, *lowerListing, []int) {
	t.Helper()
	cfg.Lowers = randomMergeStack(t, rng)
	u, err := newUnion(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dirs := wholeStack(len(cfg.Lowers))
	whole, used, err := u.buildLowerListing(dirs)
	if err != nil {
		u.close()
		t.Fatal(err)
	}
	return u, dirs, whole, used
}

// Random stacks: the k-way merge of sorted layers gives the listing the
// plain rule gives.
func TestMergeAgreesWithReferenceOnRandomStacks(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := range 40 {
		u, dirs, ll, used := randomMergeUnion(t, rng, Config{})
		names, ents, wantUsed := referenceMerge(t, u, dirs)
		u.close()
		if !slices.Equal(ll.names, names) || !slices.Equal(used, wantUsed) {
			t.Fatalf("round %d: names %v (layers %v), want %v (layers %v)", round, ll.names, used, names, wantUsed)
		}
		for i := range ents {
			if !reflect.DeepEqual(ll.ents[i], ents[i]) {
				t.Fatalf("round %d: %s: %s, want %s", round, names[i], describeEntry(ll.ents[i]), describeEntry(ents[i]))
			}
		}
	}
}

func describeEntry(e lowerEntry) string {
	return fmt.Sprintf("{ino %d layer %d mode %o dirs %v}", e.ino, e.top, e.typ, e.dirLayers())
}
