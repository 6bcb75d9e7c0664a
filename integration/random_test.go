package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Seeded random sequences: a random stack of 2-4 layers over a small name
// space, then a random op sequence over the same names (so ops collide:
// rename onto an existing name, rmdir of a non-empty directory, link onto
// a directory...). Everything is a pure function of the seed.
//
//	STRATA_SEED=N                 replay one sequence (the seed printed on failure)
//	STRATA_RANDOM_SEQUENCES=K     how many sequences (default 64)
//	STRATA_RANDOM_OPS=M           ops per sequence (default 400)

const (
	// 64 fixed seeds cost a few seconds and have found bugs that the
	// first 8 missed (seeds 1040, 1049 and 1054 over FUSE io_uring).
	defaultRandomSequences = 64
	defaultRandomOps       = 400
	// compareEvery is how often (in ops) the trees are compared, so a
	// failure is reported close to the op that caused it.
	compareEvery = 50
	// defaultSeedBase is the first of the fixed default seeds.
	defaultSeedBase = 1000
)

// randomPaths is the name space, parents before children.
var randomPaths = []string{"a", "b", "x", "a/c", "a/x", "a/y", "b/x", "b/y", "a/c/x", "a/c/y"}

func TestRandom(t *testing.T) {
	seeds, nOps := randomSeeds(t), envInt(t, "STRATA_RANDOM_OPS", defaultRandomOps)
	t.Logf("random sequences: seeds %v, %d ops each", seeds, nOps)
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runRandomSequence(t, seed, nOps) })
	}
}

func randomSeeds(t *testing.T) []uint64 {
	if s := os.Getenv("STRATA_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("STRATA_SEED=%q: %v", s, err)
		}
		return []uint64{seed}
	}
	n := envInt(t, "STRATA_RANDOM_SEQUENCES", defaultRandomSequences)
	// The default seeds are fixed, so the suite gives the same verdict on
	// every run (CI included); STRATA_RANDOM_EXPLORE=1 draws new ones from
	// the clock to look for new failures.
	base := uint64(defaultSeedBase)
	if os.Getenv("STRATA_RANDOM_EXPLORE") != "" {
		base = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	seeds := make([]uint64, n)
	for i := range seeds {
		seeds[i] = base + uint64(i)
	}
	return seeds
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, s)
	}
	return n
}

func runRandomSequence(t *testing.T, seed uint64, nOps int) {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	stack := randomStack(r)
	ops := make([]op, nOps)
	for i := range ops {
		ops[i] = randomOp(r)
	}
	remount := seed%2 == 1
	// Every other pair of seeds probes lower directories name by name
	// until they are listed, as strata does with huge ones.
	probeAll := seed%4 >= 2
	p := setupPair(t, scenario{stack: stack, probeAll: probeAll})
	fail := func(at int, diffs []diff) {
		t.Fatalf("random sequence failed at op %d. Replay: STRATA_SEED=%d go test -run 'Random' ./integration\n%s\nstack (topmost first):\n%sops:\n%s",
			at, seed, formatDiffs(diffs, 40), describeStack(stack), formatOps(ops[:at+1]))
	}
	for i, o := range ops {
		if diffs := p.applyOps([]op{o}); len(diffs) > 0 {
			diffs[0].path = fmt.Sprintf("(op %d)", i)
			fail(i, diffs)
		}
		if (i+1)%compareEvery == 0 {
			if diffs := p.compare(); len(diffs) > 0 {
				fail(i, diffs)
			}
		}
	}
	if remount {
		if diffs := append(p.remountBoth(), p.compare()...); len(diffs) > 0 {
			fail(len(ops)-1, diffs)
		}
	}
}

// layerModel is what a union of layers shows at each path of the name
// space: "dir", "file", "symlink", "fifo" (absent paths are missing).
type layerModel map[string]string

// randomStack builds 2-4 layers bottom-up and returns them topmost first.
func randomStack(r *rand.Rand) []layer {
	n := 2 + r.IntN(3)
	var bottomUp []layer
	below := layerModel{}
	for i := 0; i < n; i++ {
		l, kinds := randomLayer(r, below, i == 0)
		bottomUp = append(bottomUp, l)
		below = mergeModel(below, kinds)
	}
	stack := make([]layer, n)
	for i, l := range bottomUp {
		stack[n-1-i] = l
	}
	return stack
}

// randomLayer picks a kind for each path of the name space. It writes a
// whiteout only where the kernel's oracle handles one: in a directory that
// is merged with a directory below, which an opaque directory on the way
// in the same layer rules out (the kernel lists a whiteout inside an
// opaque or unmerged lower directory and then fails its lookup).
func randomLayer(r *rand.Rand, below layerModel, bottom bool) (layer, map[string]string) {
	var l layer
	kinds := map[string]string{} // this layer: dir, opaque, file, symlink, fifo, whiteout
	var files []string
	for _, p := range randomPaths {
		parent := parentOf(p)
		if !ancestorsCanBeDirs(kinds, p) {
			continue // an ancestor is not a directory in this layer
		}
		roll := r.IntN(100)
		var e entry
		switch {
		case roll < 45:
			continue
		case roll < 60:
			e = file(p, randomContent(r), randomEntryOptions(r)...)
			kinds[p] = "file"
			files = append(files, p)
		case roll < 70:
			e = dir(p, randomEntryOptions(r)...)
			kinds[p] = "dir"
		case roll < 76 && !bottom:
			e = opaqueDir(p, allOpaqueFormats[r.IntN(len(allOpaqueFormats))])
			kinds[p] = "opaque"
		case roll < 84 && !bottom && !underOpaque(kinds, p) && (parent == "" || below[parent] == "dir"):
			e = whiteoutEntry(p, allWhiteoutFormats[r.IntN(len(allWhiteoutFormats))])
			kinds[p] = "whiteout"
		case roll < 88:
			e = symlink(p, randomPaths[r.IntN(len(randomPaths))])
			kinds[p] = "symlink"
		case roll < 92:
			e = fifo(p)
			kinds[p] = "fifo"
		case roll < 96 && len(files) > 0:
			e = hardlink(p, files[r.IntN(len(files))])
			kinds[p] = "file"
		default:
			e = sparse(p, 3<<20, map[int64]string{int64(r.IntN(3)) << 20: randomContent(r)})
			kinds[p] = "file"
			files = append(files, p)
		}
		for a := parent; a != ""; a = parentOf(a) {
			if kinds[a] == "" {
				kinds[a] = "dir" // made implicitly by the builder
			}
		}
		l = append(l, e)
	}
	return l, kinds
}

// underOpaque reports whether a directory on the way to p is opaque in
// this layer, hiding what the layers below have there.
func underOpaque(kinds map[string]string, p string) bool {
	for a := parentOf(p); a != ""; a = parentOf(a) {
		if kinds[a] == "opaque" {
			return true
		}
	}
	return false
}

func ancestorsCanBeDirs(kinds map[string]string, p string) bool {
	for a := parentOf(p); a != ""; a = parentOf(a) {
		switch kinds[a] {
		case "", "dir", "opaque":
		default:
			return false
		}
	}
	return true
}

// mergeModel puts a layer's kinds on top of the union below it.
func mergeModel(below layerModel, kinds map[string]string) layerModel {
	out := layerModel{}
	for p, k := range below {
		out[p] = k
	}
	hide := func(p string) {
		for q := range out {
			if strings.HasPrefix(q, p+"/") {
				delete(out, q)
			}
		}
	}
	for _, p := range randomPaths {
		switch k := kinds[p]; k {
		case "":
		case "whiteout":
			delete(out, p)
			hide(p)
		case "opaque":
			hide(p)
			out[p] = "dir"
		case "dir":
			if out[p] != "dir" {
				hide(p)
			}
			out[p] = "dir"
		default:
			hide(p)
			out[p] = k
		}
	}
	return out
}

func randomContent(r *rand.Rand) string {
	words := []string{"alpha", "beta", "gamma", "", "delta\n", "0123456789"}
	return strings.Repeat(words[r.IntN(len(words))], 1+r.IntN(3))
}

func randomEntryOptions(r *rand.Rand) []entryOption {
	var opts []entryOption
	if r.IntN(3) == 0 {
		opts = append(opts, mode([]uint32{0o600, 0o640, 0o755, 0o700, 0o4755}[r.IntN(5)]))
	}
	if r.IntN(4) == 0 {
		opts = append(opts, owner(r.IntN(3)*1000, r.IntN(3)*1000))
	}
	if r.IntN(4) == 0 {
		opts = append(opts, xattr("user.k"+strconv.Itoa(r.IntN(2)), randomContent(r)))
	}
	if r.IntN(4) == 0 {
		opts = append(opts, mtime(1_000_000_000+r.Int64N(1_000_000_000), r.Int64N(1_000_000_000)))
	}
	return opts
}

// randomOp picks one op over the name space, weighted towards the
// namespace changes where union filesystems go wrong.
func randomOp(r *rand.Rand) op {
	p := randomPaths[r.IntN(len(randomPaths))]
	q := randomPaths[r.IntN(len(randomPaths))]
	dirs := []string{"", "a", "b", "a/c"}
	d := dirs[r.IntN(len(dirs))]
	data := randomContent(r)
	switch r.IntN(30) {
	case 0, 1:
		return opCreate(p, 0o644)
	case 2, 3:
		return opWrite(p, int64(r.IntN(8)), data)
	case 4:
		return opAppend(p, data)
	case 5:
		return opRead(p)
	case 6:
		return opTruncate(p, int64(r.IntN(20)))
	case 7, 8:
		return opMkdir(p, 0o755)
	case 9:
		return opMknod(p, unix.S_IFIFO, 0o644, 0, 0)
	case 10:
		return opSymlink(q, p)
	case 11:
		return opLink(p, q)
	case 12, 13:
		return opUnlink(p)
	case 14, 15:
		return opRmdir(p)
	case 16, 17, 18:
		flags := []int{0, 0, 0, unix.RENAME_NOREPLACE, unix.RENAME_EXCHANGE}[r.IntN(5)]
		return opRename(p, q, flags)
	case 19:
		return opChmod(p, []uint32{0o600, 0o755, 0o4711, 0o1777}[r.IntN(4)])
	case 20:
		return opChown(p, r.IntN(3)*1000, r.IntN(3)*1000)
	case 21:
		return opUtimens(p, 1_500_000_000+r.Int64N(100_000_000), r.Int64N(1_000_000_000))
	case 22:
		return opSetxattr(p, "user.k"+strconv.Itoa(r.IntN(2)), data, 0)
	case 23:
		return opRemovexattr(p, "user.k"+strconv.Itoa(r.IntN(2)))
	case 24:
		return opStat(p)
	case 25:
		return opReaddir(d)
	case 26:
		return opListxattr(p)
	case 27:
		return opCopyRange(p, 0, q, int64(r.IntN(4)), 16)
	case 28:
		return opReadBeforeCopyUp(p, data)
	default:
		return opOpenUnlinked(p, data)
	}
}

// describeStack lists a stack's entries for a failure report.
func describeStack(stack []layer) string {
	var b strings.Builder
	for i, l := range stack {
		fmt.Fprintf(&b, "  layer %d:\n", i)
		for _, e := range l {
			fmt.Fprintf(&b, "    %s\n", describeEntry(e))
		}
	}
	return b.String()
}

func describeEntry(e entry) string {
	kinds := []string{"file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev", "socket", "whiteout", "opaque"}
	s := fmt.Sprintf("%-8s %s", kinds[e.kind], e.path)
	switch e.kind {
	case kindFile:
		if e.extents != nil {
			keys := make([]int64, 0, len(e.extents))
			for k := range e.extents {
				keys = append(keys, k)
			}
			sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
			s += fmt.Sprintf(" sparse size=%d data at %v", e.size, keys)
		} else {
			s += fmt.Sprintf(" %q", e.content)
		}
	case kindSymlink, kindHardlink:
		s += " -> " + e.target
	case kindWhiteout:
		s += " (" + e.wf.String() + ")"
	case kindOpaque:
		s += " (" + e.of.String() + ")"
	}
	if e.hasMode {
		s += fmt.Sprintf(" mode=%04o", e.mode)
	}
	if e.uid != 0 || e.gid != 0 {
		s += fmt.Sprintf(" owner=%d:%d", e.uid, e.gid)
	}
	for _, x := range e.xattrs {
		s += fmt.Sprintf(" %s=%q", x.name, x.value)
	}
	if e.mtime != nil {
		s += " mtime=" + fmtTime(*e.mtime)
	}
	return s
}

// drawnRegressions are sequences the random exploration found, cut down
// to the ops that still show the difference, replayed on every run: the
// stack of the seed, and the ops at those positions of its sequence.
var drawnRegressions = []struct {
	seed uint64
	ops  []int
	why  string
}{
	{929051353, []int{20, 21, 28, 31, 40}, "a lower hard link's object with two kernel inodes " +
		"(a read-only open kept across its copy-up): a chmod through one name must show " +
		"in a stat of the other right away; a twin's attributes were kept for a jiffy"},
}

func TestRandomDrawnRegressions(t *testing.T) {
	for _, reg := range drawnRegressions {
		t.Run(fmt.Sprint(reg.seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(reg.seed, 0x5eed))
			stack := randomStack(r)
			all := make([]op, slices.Max(reg.ops)+1)
			for i := range all {
				all[i] = randomOp(r)
			}
			var ops []op
			for _, i := range reg.ops {
				ops = append(ops, all[i])
			}
			p := setupPair(t, scenario{stack: stack})
			diffs := append(p.applyOps(ops), p.compare()...)
			if len(diffs) > 0 {
				t.Fatalf("%s\n%s\nstack (topmost first):\n%sops:\n%s", reg.why, formatDiffs(diffs, 40), describeStack(stack), formatOps(ops))
			}
		})
	}
}
