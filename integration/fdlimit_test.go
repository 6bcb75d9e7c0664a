package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A daemon with few descriptors keeps its caches to a share of them. Under
// a hard limit of 512: a walk over more directories than that, a read of
// every file, then 60 new files written and held open at once, all work.
// (With a fixed cache of 4,096 directory descriptors the walk took every
// descriptor, and every open after it failed with EMFILE.)
func TestLowDescriptorLimit(t *testing.T) {
	if sutName() != "strata" {
		t.Skip("checks the strata daemon's descriptor budget")
	}
	const limit, dirs, held = 512, 600, 60
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	for i := range dirs {
		sub := filepath.Join(lower, fmt.Sprintf("d%03d", i))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "f"), []byte(sub), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v := mountView(t, strataTarget{bin: strataBin, fileLimit: limit}, newStackDirs(t, dir, []string{lower}, false))
	checkDaemonFileLimit(t, v, limit)
	v.guarded("using the view under a low descriptor limit", func() {
		for i := range dirs {
			sub := filepath.Join(v.mnt, fmt.Sprintf("d%03d", i))
			if _, err := os.ReadDir(sub); err != nil {
				t.Fatalf("walk: %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(sub, "f")); err != nil || !strings.HasSuffix(string(b), fmt.Sprintf("d%03d", i)) {
				t.Fatalf("read %s/f: %q, %v", sub, b, err)
			}
		}
		var open []*os.File
		defer func() {
			for _, f := range open {
				f.Close()
			}
		}()
		for i := range held {
			f, err := os.Create(filepath.Join(v.mnt, fmt.Sprintf("d%03d", i), "new"))
			if err != nil {
				t.Fatalf("create with %d files held open: %v", len(open), err)
			}
			open = append(open, f)
			if _, err := f.WriteString("new"); err != nil {
				t.Fatalf("write: %v", err)
			}
		}
	})
	if v.hung != "" {
		t.Fatalf("hung during %s", v.hung)
	}
}

// checkDaemonFileLimit checks the view's daemon runs under the given hard
// limit on open descriptors, so the test above tests something.
func checkDaemonFileLimit(t *testing.T, v *view, limit int) {
	t.Helper()
	if len(v.daemons) == 0 {
		t.Fatal("no daemon found for the view")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", v.daemons[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); strings.HasPrefix(line, "Max open files") && len(f) >= 5 {
			if f[3] != fmt.Sprint(limit) || f[4] != fmt.Sprint(limit) {
				t.Fatalf("daemon's open file limits %s / %s, want %d", f[3], f[4], limit)
			}
			return
		}
	}
	t.Fatalf("no open file limit in /proc/%d/limits", v.daemons[0])
}
