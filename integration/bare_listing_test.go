package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// namesOnlyWalk reads every directory below root by name and type only,
// as find does: no stat of any file.
func namesOnlyWalk(root string) (entries int, err error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	ents, err := readDirents(fd, 32<<10, false)
	unix.Close(fd)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if e.name == "." || e.name == ".." {
			continue
		}
		entries++
		if e.typ == unix.DT_DIR {
			n, err := namesOnlyWalk(filepath.Join(root, e.name))
			if err != nil {
				return entries, err
			}
			entries += n
		}
	}
	return entries, nil
}

// After find-like walks, strata lists files without attributes (the
// kernel looks them up only when they are used). The view must not
// change: the full tree, and the results of operations on files that were
// listed bare, match kernel overlayfs.
func TestNamesOnlyWalksKeepTheView(t *testing.T) {
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	for d := 0; d < 120; d++ {
		sub := filepath.Join(lower, fmt.Sprintf("d%03d", d), "sub")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := 0; f < 6; f++ {
			for _, p := range []string{filepath.Join(sub, "..", fmt.Sprintf("f%d", f)), filepath.Join(sub, fmt.Sprintf("g%d", f))} {
				if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := os.Symlink("f0", filepath.Join(lower, fmt.Sprintf("d%03d", d), "link")); err != nil {
			t.Fatal(err)
		}
	}
	p := mountPair(t, dir, []string{lower}, []string{lower}, false, nil)

	for i := 0; i < 3; i++ {
		var n int
		var err error
		p.sut.guarded("a names-only walk", func() { n, err = namesOnlyWalk(p.sut.mnt) })
		if p.sut.hung != "" {
			t.Fatalf("hung during %s", p.sut.hung)
		}
		if err != nil || n != 120*(2+6+1+6) {
			t.Fatalf("names-only walk %d: %d entries, %v", i, n, err)
		}
	}
	ops := []op{
		opStat("d007/f3"),
		opRead("d008/sub/g2"),
		opAppend("d009/f1", "more"),
		opChmod("d010/sub/g0", 0o600),
		opUnlink("d011/f2"),
		opRename("d012/f4", "d013/sub/moved", 0),
		opLink("d014/f5", "d014/sub/hard"),
		opReadlink("d015/link"),
		opStat("d016/nosuch"),
	}
	if diffs := p.applyOps(ops); len(diffs) > 0 {
		t.Errorf("operations after names-only walks differ:\n%s", formatDiffs(diffs, 20))
	}
	if diffs := p.compare(); len(diffs) > 0 {
		t.Errorf("trees differ after names-only walks:\n%s", formatDiffs(diffs, 20))
	}
}
