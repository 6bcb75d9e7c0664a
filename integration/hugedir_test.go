package integration

import (
	"fmt"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// hugeDirNames is how many files the bottom layer's huge directory holds:
// with names this long, its size passes strata's default probe size (256
// KiB), so lookups in it probe until its whole merge is built.
const hugeDirNames = 9000

func hugeName(i int) string { return fmt.Sprintf("big/a-long-file-name-for-a-big-dir-%05d", i) }

// A lookup in a huge lower directory probes it name by name while the
// whole merge is built in the background (strata's default probe size):
// names shown, whited out in every format, replaced by a directory,
// re-created, removed and missing look the same as on overlayfs, before
// and after the directory is listed, and the listing matches.
func TestHugeLowerDirectory(t *testing.T) {
	var bottom layer
	bottom = append(bottom, dir("big"))
	for i := range hugeDirNames {
		bottom = append(bottom, file(hugeName(i), ""))
	}
	bottom = append(bottom, dir("big/sub"), file("big/sub/below", "below"))
	middle := layer{
		file(hugeName(1), "replaced in the middle"),
		dir(hugeName(2)), file(hugeName(2)+"/inside", "inside"),
		dir("big/sub"), file("big/sub/above", "above"),
	}
	for k, wf := range allWhiteoutFormats {
		middle = append(middle, whiteoutEntry(hugeName(10+k), wf))
	}
	top := layer{file("big/top-only", "top")}
	sc := scenario{name: "huge", stack: []layer{top, middle, bottom}}
	p := setupPair(t, sc)
	bigSize := dirSize(t, filepath.Join(p.sutLowers[2], "big"))
	if bigSize < 256<<10 {
		t.Fatalf("the huge directory is %d bytes: below the probe size, it would be merged whole", bigSize)
	}
	lookups := []op{
		opStat(hugeName(0)), opRead(hugeName(1)), opStat(hugeName(2)), opRead(hugeName(2) + "/inside"),
		opStat("big/missing"), opStat("big/.wh." + hugeName(10)[4:]),
		opStat("big/sub/below"), opStat("big/sub/above"), opReaddir("big/sub"),
		opRead("big/top-only"), opStat(hugeName(hugeDirNames - 1)),
	}
	for k := range allWhiteoutFormats {
		lookups = append(lookups, opStat(hugeName(10+k)))
	}
	changes := []op{
		opCreate(hugeName(10), 0o644), opWrite(hugeName(10), 0, "re-created over a whiteout"),
		opUnlink(hugeName(3)), opStat(hugeName(3)), opMkdir(hugeName(4)+"-new", 0o755),
		opRename(hugeName(5), "big/renamed", 0), opStat(hugeName(5)),
	}
	ops := append(append(lookups, changes...), opReaddir("big"))
	ops = append(ops, lookups...)
	if diffs := append(p.applyOps(ops), p.compare()...); len(diffs) > 0 {
		t.Errorf("%s\nops:\n%s", formatDiffs(diffs, 60), formatOps(ops))
	}
}

func dirSize(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size
}
