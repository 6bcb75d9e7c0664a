package integration

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// scenario is a layer stack and the ops to apply to its union view.
type scenario struct {
	name  string
	stack []layer // topmost first
	ops   []op
	// readOnly mounts without an upper layer.
	readOnly bool
	// tmpfsLayers puts these layers (indexes into stack) each on its own
	// tmpfs, so layers sit on different filesystems that reuse inode
	// numbers. The oracle then needs xino=on to keep one st_dev.
	tmpfsLayers []int
	// extraOracleOptions are added to oracleOptions.
	extraOracleOptions []string
	// probeAll has strata look every lower directory up name by name
	// until something lists it (probe_size=1), instead of merging it
	// whole on the first lookup: the path a huge directory takes.
	probeAll bool
}

// pair is the oracle and the system under test, each mounted on its own
// copy of an equivalent stack.
type pair struct {
	t      *testing.T
	oracle *view
	sut    *view
	timed  *timedInodes
	// sutLowers and oracleLowers are the layer directories (the oracle's
	// converted to overlay-native markers).
	sutLowers    []string
	oracleLowers []string
}

func setupPair(t *testing.T, sc scenario) *pair {
	t.Helper()
	dir := t.TempDir()
	sutLowers := prepareLayerDirs(t, filepath.Join(dir, "sut-layers"), len(sc.stack), sc.tmpfsLayers)
	for i, l := range sc.stack {
		if err := buildLayer(sutLowers[i], l); err != nil {
			t.Fatalf("build layer %d: %v", i, err)
		}
	}
	oracleLowers := prepareLayerDirs(t, filepath.Join(dir, "oracle-layers"), len(sc.stack), sc.tmpfsLayers)
	for i := range sutLowers {
		if err := convertLayerToOverlay(sutLowers[i], oracleLowers[i]); err != nil {
			t.Fatal(err)
		}
	}
	var sutOptions []string
	if sc.probeAll {
		sutOptions = []string{"probe_size=1"}
	}
	return mountPairWith(t, dir, sutLowers, oracleLowers, sc.readOnly, sc.extraOracleOptions, sutOptions)
}

// mountPair mounts the oracle on oracleLowers and the SUT on sutLowers,
// each with its own upper and work directory under dir.
func mountPair(t *testing.T, dir string, sutLowers, oracleLowers []string, readOnly bool, extraOracleOptions []string) *pair {
	t.Helper()
	return mountPairWith(t, dir, sutLowers, oracleLowers, readOnly, extraOracleOptions, nil)
}

// mountPairWith is mountPair that gives strata, as the SUT, the mount
// options sutOptions.
func mountPairWith(t *testing.T, dir string, sutLowers, oracleLowers []string, readOnly bool, extraOracleOptions, sutOptions []string) *pair {
	t.Helper()
	oracle := kernelOverlay{options: append(append([]string{}, oracleOptions...), extraOracleOptions...)}
	p := &pair{t: t, sutLowers: sutLowers, oracleLowers: oracleLowers}
	p.oracle = mountView(t, oracle, newStackDirs(t, filepath.Join(dir, "oracle"), oracleLowers, readOnly))
	sut, sutLayerDirs := sutTarget(t), sutLowers
	if s, ok := sut.(strataTarget); ok {
		s.options = sutOptions
		sut = s
	}
	if sutName() == "kernel" {
		// The harness self-check: the kernel reads only its own markers.
		sut, sutLayerDirs = oracle, oracleLowers
	}
	p.sut = mountView(t, sut, newStackDirs(t, filepath.Join(dir, "sut"), sutLayerDirs, readOnly))
	p.timed = newTimedInodes(p.oracle.mnt, p.walk(p.oracle))
	return p
}

// prepareLayerDirs returns n layer directory paths under dir, mounting a
// tmpfs on those listed in onTmpfs.
func prepareLayerDirs(t *testing.T, dir string, n int, onTmpfs []int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, fmt.Sprintf("L%d", i))
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, k := range onTmpfs {
			if k == i {
				mountTmpfs(t, p)
			}
		}
		out = append(out, p)
	}
	return out
}

// mountTmpfs mounts a small tmpfs (32-bit inode numbers, which every tmpfs
// starts counting from the same value) on dir until the test ends.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,inode32,mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs %s: %v; detaching", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// newStackDirs makes an upper and a work directory under dir (unless
// readOnly). The upper root gets fixed owner, mode and times: it is the
// mount root's inode on both targets.
func newStackDirs(t *testing.T, dir string, lowers []string, readOnly bool) stackDirs {
	t.Helper()
	d := stackDirs{lowers: lowers}
	if readOnly {
		return d
	}
	d.upper, d.work = filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, p := range []string{d.upper, d.work} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, d.upper, []unix.Timespec{defaultTime, defaultTime}, 0); err != nil {
		t.Fatal(err)
	}
	return d
}

func (p *pair) walk(v *view) *tree {
	p.t.Helper()
	var tr *tree
	var err error
	v.guarded("walking the tree", func() { tr, err = walkTree(v.mnt) })
	if v.hung != "" {
		p.t.Fatalf("%s hung while %s; FUSE connection aborted", v.target.name(), v.hung)
	}
	if err != nil {
		p.t.Fatalf("walk %s (%s): %v", v.mnt, v.target.name(), err)
	}
	return tr
}

// applyOps runs each op on the oracle, then on the SUT, and lists every op
// whose result (errno and observation) differs.
func (p *pair) applyOps(ops []op) []diff {
	var diffs []diff
	for i, o := range ops {
		p.timed.beforeOp(o)
		ro := applyOp(p.oracle.mnt, o)
		var rs opResult
		p.sut.guarded(o.String(), func() { rs = applyOp(p.sut.mnt, o) })
		if p.sut.hung != "" {
			p.t.Fatalf("%s hung in op %d %s; FUSE connection aborted\nops:\n%s", p.sut.target.name(), i, o, formatOps(ops[:i+1]))
		}
		p.timed.afterOp(o, ro)
		if ro != rs {
			diffs = append(diffs, diff{path: fmt.Sprintf("(op %d)", i), field: o.String(), oracle: ro.String(), sut: rs.String()})
		}
	}
	return diffs
}

// compare walks both views and lists the differences.
func (p *pair) compare() []diff {
	oracle := p.walk(p.oracle)
	return compareTrees(oracle, p.walk(p.sut), compareOptions{mtimeChecked: p.timed.checker(oracle)})
}

// remountBoth unmounts and remounts both views and lists the paths whose
// st_ino changed on one side but not on the other.
func (p *pair) remountBoth() []diff {
	p.t.Helper()
	before := map[*view]map[string]uint64{}
	for _, v := range []*view{p.oracle, p.sut} {
		before[v] = inodeNumbers(p.walk(v))
		if err := v.remount(); err != nil {
			p.t.Fatalf("remount %s: %v", v.target.name(), err)
		}
	}
	oChanged := changedInodes(before[p.oracle], inodeNumbers(p.walk(p.oracle)))
	sChanged := changedInodes(before[p.sut], inodeNumbers(p.walk(p.sut)))
	var diffs []diff
	for _, path := range unionKeys(oChanged, sChanged) {
		diffs = append(diffs, diff{path, "st_ino same after remount", yesNo(!oChanged[path]), yesNo(!sChanged[path])})
	}
	return diffs
}

func changedInodes(before, after map[string]uint64) map[string]bool {
	out := map[string]bool{}
	for p, ino := range before {
		if a, ok := after[p]; ok && a != ino {
			out[p] = true
		}
	}
	return out
}

func unionKeys(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if !a[k] {
			out = append(out, k)
		}
	}
	return out
}

// runScenario applies sc to both targets and fails t with every
// difference: op results, then (after a remount of both if asked) the
// trees.
func runScenario(t *testing.T, sc scenario, remount bool) {
	t.Helper()
	p := setupPair(t, sc)
	diffs := p.applyOps(sc.ops)
	if remount {
		diffs = append(diffs, p.remountBoth()...)
	}
	diffs = append(diffs, p.compare()...)
	if len(diffs) > 0 {
		t.Errorf("%s\nops:\n%s", formatDiffs(diffs, 60), formatOps(sc.ops))
	}
}

func formatOps(ops []op) string {
	var b strings.Builder
	for i, o := range ops {
		fmt.Fprintf(&b, "  %3d %s\n", i, o)
	}
	return b.String()
}

// timedInodes tracks which inodes have an mtime the test determined (from
// the layers, or set by utimensat) rather than the clock: only those are
// compared. It is keyed by the oracle's inode numbers, which kernel
// overlayfs keeps across copy-up and rename, so hard links and moved
// trees need no bookkeeping; an inode created during the test is never in
// the set.
type timedInodes struct {
	oracleMnt string
	clean     map[uint64]bool
}

func newTimedInodes(oracleMnt string, initial *tree) *timedInodes {
	ti := &timedInodes{oracleMnt: oracleMnt, clean: map[uint64]bool{}}
	for _, n := range initial.nodes {
		ti.clean[n.ino] = true
	}
	return ti
}

// checker returns the mtimeChecked function for a final oracle walk.
func (ti *timedInodes) checker(final *tree) func(p string) bool {
	return func(p string) bool {
		n := final.nodes[p]
		return n != nil && ti.clean[n.ino]
	}
}

// oracleIno is the oracle's st_ino for p, looked up relative to the mount
// root so paths near PATH_MAX work; with follow, of what a symlink at p
// points to.
func (ti *timedInodes) oracleIno(p string, follow bool) (uint64, bool) {
	root, err := unix.Open(ti.oracleMnt, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(root)
	var st unix.Stat_t
	flags := unix.AT_SYMLINK_NOFOLLOW
	if follow {
		flags = 0
	}
	if err := unix.Fstatat(root, rel(p), &st, flags); err != nil {
		return 0, false
	}
	return st.Ino, true
}

func parentOf(p string) string {
	d := path.Dir(p)
	if d == "." {
		return ""
	}
	return d
}

// beforeOp drops the inodes whose mtime o may change; call it before o
// runs on the oracle.
func (ti *timedInodes) beforeOp(o op) {
	for _, p := range mtimeTouched(o) {
		if ino, ok := ti.oracleIno(p, false); ok {
			delete(ti.clean, ino)
		}
		// Writes, truncates and opens follow a symlink at p: its target
		// changes.
		if ino, ok := ti.oracleIno(p, true); ok {
			delete(ti.clean, ino)
		}
	}
}

// afterOp marks the target of a successful utimensat as timed again.
func (ti *timedInodes) afterOp(o op, r opResult) {
	if o.Kind == "utimens" && r.Err == "" {
		if ino, ok := ti.oracleIno(o.Path, false); ok {
			ti.clean[ino] = true
		}
	}
}

// mtimeTouched lists the existing paths whose mtime o may change, and
// those it may remove: a removed upper inode's number can be reused by a
// new file, which must not inherit "timed".
func mtimeTouched(o op) []string {
	switch o.Kind {
	case "read", "readlink", "getxattr", "listxattr", "stat", "statfs", "readdir", "seekmap", "locks",
		"setxattr", "removexattr", "chmod", "chown", "utimens":
		return nil // atime and ctime only
	case "open":
		var out []string
		if o.Flags&unix.O_CREAT != 0 {
			out = append(out, parentOf(o.Path))
		}
		// An open for writing, even with no write after it: kernel
		// overlayfs with metacopy=on copies a metacopy file's data up
		// then and leaves the upper file's mtime at the time of that
		// copy (checked on 6.18: chmod, then open O_WRONLY). strata
		// keeps the mtime; neither is compared.
		if o.Flags&unix.O_TRUNC != 0 || o.Flags&(unix.O_WRONLY|unix.O_RDWR) != 0 {
			out = append(out, o.Path)
		}
		return out
	case "mkdir", "mknod", "symlink":
		return []string{parentOf(o.Path)}
	case "unlink", "rmdir":
		return []string{o.Path, parentOf(o.Path)}
	case "link":
		return []string{o.Path2, parentOf(o.Path2)}
	case "copyrange":
		return []string{o.Path2, parentOf(o.Path2)}
	case "rename", "open-renamed":
		return []string{o.Path, o.Path2, parentOf(o.Path), parentOf(o.Path2)}
	case "tmpfile":
		return []string{o.Path, parentOf(o.Path2)}
	case "open-unlinked":
		return []string{o.Path, parentOf(o.Path)}
	case "readdir-changing":
		return []string{o.Path, path.Join(o.Path, o.Name)}
	}
	// Data writes, truncation, and concurrent-ns (a directory's entries).
	return []string{o.Path}
}
