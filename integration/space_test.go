package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Removing files gives their space back as kernel overlayfs does: a big
// file's before the unlink returns (seen on the upper filesystem itself),
// and every removed file's before a statfs through the mount that follows
// the removal. The files are written and read again first, so that strata
// keeps each one's passthrough registration, which holds the file open
// after its last name goes.
func TestRemovedFilesGiveTheirSpaceBack(t *testing.T) {
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	if err := os.Mkdir(lower, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tg := range []target{oracleTarget(), sutTarget(t)} {
		t.Run(tg.name(), func(t *testing.T) {
			layers := filepath.Join(dir, tg.name())
			if err := os.Mkdir(layers, 0o755); err != nil {
				t.Fatal(err)
			}
			mountTmpfs(t, layers)
			dirs := newStackDirs(t, layers, []string{lower}, false)
			v := mountView(t, tg, dirs)
			v.guarded("removing files", func() { checkSpaceGivenBack(t, v) })
			if v.hung != "" {
				t.Fatalf("hung during %s", v.hung)
			}
		})
	}
}

func checkSpaceGivenBack(t *testing.T, v *view) {
	const small, big = 64 << 10, 4 << 20
	files := map[string]int{"big": big}
	for i := range 16 {
		files[fmt.Sprintf("small%d", i)] = small
	}
	before := freeBytes(t, v.mnt)
	for name, size := range files {
		p := filepath.Join(v.mnt, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	if used := before - freeBytes(t, v.mnt); used < big+16*small {
		t.Fatalf("writing the files took %d bytes, want at least %d", used, big+16*small)
	}

	upperBefore := freeBytes(t, v.dirs.upper)
	if err := os.Remove(filepath.Join(v.mnt, "big")); err != nil {
		t.Fatal(err)
	}
	if freed := freeBytes(t, v.dirs.upper) - upperBefore; freed < big {
		t.Errorf("the upper filesystem got %d bytes back when the unlink of a %d-byte file returned", freed, big)
	}

	for name := range files {
		if name == "big" {
			continue
		}
		if err := os.Remove(filepath.Join(v.mnt, name)); err != nil {
			t.Fatal(err)
		}
	}
	if after := freeBytes(t, v.mnt); after != before {
		t.Errorf("statfs right after the removals: %d bytes free, %d before the files were written", after, before)
	}
}

// freeBytes is the free space statfs reports for the filesystem of path.
func freeBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return int64(st.Bfree) * st.Bsize
}
