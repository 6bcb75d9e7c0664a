package integration

import (
	"os"
	"path/filepath"
	"testing"
)

// A renamed directory records where its lower content lives (overlay's
// redirect xattr), and a later lookup follows that path through the lower
// layers as overlayfs does: a non-directory on the way in a higher layer
// hides the layers below. Here a/c is in the top layer, a is a file in the
// middle one, and a/c/hidden in the bottom one is not part of the view;
// after a/c is renamed and the mounts are made again, it must stay out.
func TestRedirectStopsAtANonDirectoryOnTheWay(t *testing.T) {
	dir := t.TempDir()
	top, middle, bottom := filepath.Join(dir, "top"), filepath.Join(dir, "middle"), filepath.Join(dir, "bottom")
	for _, d := range []string{filepath.Join(top, "a", "c"), middle, filepath.Join(bottom, "a", "c")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(top, "a", "c", "shown"):     "top",
		filepath.Join(middle, "a"):                "a file in the middle layer",
		filepath.Join(bottom, "a", "c", "hidden"): "bottom",
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lowers := []string{top, middle, bottom}
	p := mountPair(t, dir, lowers, lowers, false, nil)
	if diffs := p.applyOps([]op{{Kind: "rename", Path: "a/c", Path2: "moved"}}); len(diffs) > 0 {
		t.Fatalf("the rename:\n%s", formatDiffs(diffs, 20))
	}
	if diffs := append(p.compare(), p.remountBoth()...); len(diffs) > 0 {
		t.Fatalf("before the remount:\n%s", formatDiffs(diffs, 20))
	}
	if diffs := p.compare(); len(diffs) > 0 {
		t.Fatalf("after the remount:\n%s", formatDiffs(diffs, 20))
	}
	if _, err := os.Lstat(filepath.Join(p.sut.mnt, "moved", "hidden")); !os.IsNotExist(err) {
		t.Fatalf("moved/hidden on strata after the remount: %v, want it absent", err)
	}
}
