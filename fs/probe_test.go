package fs

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// Random stacks, with every layer directory, some of them or none probed
// name by name: a partial listing finds what the whole merge lists, for
// every name a layer holds and for names none can show.
func TestPartialListingFindsWhatTheWholeMergeLists(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	names := append(slices.Clone(mergePool), "missing", ".wh.a", ".wh.", ".wh..wh..opq", ".wh..opq")
	partials := 0
	for round := range 60 {
		u, dirs, whole, wantUsed := randomMergeUnion(t, rng, Config{})
		lowers := u.cfg.Lowers
		// 1 probes every directory; a layer's own size probes those at
		// least as large; a huge size none.
		for _, over := range []int64{1, layerDirSize(t, lowers[rng.IntN(len(lowers))]), 1 << 40} {
			ll, used, err := u.mergeLowerDirs(dirs, over)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(used, wantUsed) {
				t.Fatalf("round %d, probing from %d bytes: layers %v, want %v", round, over, used, wantUsed)
			}
			if over == 1 && len(used) > 0 && ll.partial == nil {
				t.Fatalf("round %d: probing every directory gave a whole listing", round)
			}
			if ll.partial != nil {
				partials++
			}
			for _, name := range names {
				got, err := ll.find(u, name)
				if err != nil {
					t.Fatalf("round %d: find %q: %v", round, name, err)
				}
				want := whole.entry(name)
				if (got == nil) != (want == nil) || got != nil && !reflect.DeepEqual(*got, *want) {
					t.Fatalf("round %d, probing from %d bytes: %.20q: %s, want %s", round, over, name, describeFound(got), describeFound(want))
				}
			}
			ll.closeDirFds(u)
		}
		u.close()
	}
	if partials == 0 {
		t.Fatal("no partial listing was built")
	}
}

// layerDirSize is the st_size of a layer's directory d, 1 if it has none.
func layerDirSize(t *testing.T, layer string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(layer+"/d", &st); err != nil {
		return 1
	}
	return st.Size
}

func describeFound(e *lowerEntry) string {
	if e == nil {
		return "not shown"
	}
	return describeEntry(*e)
}

// The whole merge a partial listing hands over, built by a prefetch
// worker or by the listing itself, lists what a merge built directly
// lists.
func TestPartialListingHandsOverTheWholeMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
	for round := range 20 {
		u, dirs, want, _ := randomMergeUnion(t, rng, Config{ProbeDirSize: 1})
		if round%2 == 1 {
			u.prefetch.stop() // no worker: the listing builds it itself
		}
		ll, _, err := u.prefetch.listing(dirs, true)
		if err != nil {
			t.Fatal(err)
		}
		if ll.partial == nil {
			u.close()
			continue // every layer lacks the directory
		}
		got, err := ll.partial.wholeMerge(u)
		if err != nil {
			t.Fatal(err)
		}
		if got.partial != nil || !slices.Equal(got.names, want.names) || !reflect.DeepEqual(got.ents, want.ents) {
			t.Fatalf("round %d: whole merge %v, want %v", round, got.names, want.names)
		}
		if again, _ := ll.partial.wholeMerge(u); again != got {
			t.Fatalf("round %d: the whole merge was built twice", round)
		}
		u.close()
	}
}
