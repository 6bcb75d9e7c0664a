package target

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/strata-fs/strata/bench/fixture"
)

// TestMountShowsUnion mounts a small stack with whiteout and opaque
// directory on each peer that is installed and checks the union view and
// that Unmount leaves nothing behind.
func TestMountShowsUnion(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	for _, kind := range []Kind{Overlayfs, FuseOverlayfs} {
		t.Run(string(kind), func(t *testing.T) {
			if kind == FuseOverlayfs {
				if _, err := exec.LookPath("fuse-overlayfs"); err != nil {
					t.Skip("fuse-overlayfs not installed")
				}
			}
			spec := smallStack(t)
			m, err := New(kind, spec, Binaries{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m.Unmount() })
			if kind != Overlayfs && m.DaemonPID == 0 {
				t.Errorf("no daemon pid found for %s", kind)
			}
			checkUnion(t, spec.Dir)
			if err := m.Unmount(); err != nil {
				t.Fatal(err)
			}
			if IsMounted(spec.Dir) {
				t.Fatalf("%s still mounted after Unmount", spec.Dir)
			}
		})
	}
}

func TestOverlayRefusesTooManyLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	dir := t.TempDir()
	if err := fixture.WriteDeepLayers(filepath.Join(dir, "layers"), 600, 1); err != nil {
		t.Fatal(err)
	}
	spec := Spec{
		Lowers: fixture.DeepStack(filepath.Join(dir, "layers"), 600),
		Upper:  mkdir(t, dir, "upper"), Work: mkdir(t, dir, "work"), Dir: mkdir(t, dir, "mnt"),
	}
	m, err := New(Overlayfs, spec, Binaries{}, nil)
	if err == nil {
		_ = m.Unmount()
		t.Skip("this kernel mounts 600 overlay layers")
	}
	if !errors.Is(err, ErrCannotMount) {
		t.Fatalf("error %v does not wrap ErrCannotMount", err)
	}
	t.Log(err)
}

func smallStack(t *testing.T) Spec {
	t.Helper()
	dir := t.TempDir()
	bottom := fixture.Layer{Root: mkdir(t, dir, "bottom")}
	top := fixture.Layer{Root: mkdir(t, dir, "top")}
	must(t, bottom.WriteFile("a/kept", []byte("bottom"), 0o644))
	must(t, bottom.WriteFile("a/gone", []byte("bottom"), 0o644))
	must(t, bottom.WriteFile("o/hidden", []byte("bottom"), 0o644))
	must(t, top.WriteFile("a/kept", []byte("top"), 0o644))
	must(t, top.Whiteout("a/gone"))
	must(t, top.MakeOpaque("o"))
	must(t, top.WriteFile("o/shown", []byte("top"), 0o644))
	return Spec{
		Lowers: []string{top.Root, bottom.Root},
		Upper:  mkdir(t, dir, "upper"), Work: mkdir(t, dir, "work"), Dir: mkdir(t, dir, "mnt"),
	}
}

func checkUnion(t *testing.T, mnt string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(mnt, "a/kept")); err != nil || string(b) != "top" {
		t.Errorf("a/kept = %q, %v; want the top layer's", b, err)
	}
	for _, hidden := range []string{"a/gone", "o/hidden"} {
		if _, err := os.Lstat(filepath.Join(mnt, hidden)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want it hidden", hidden, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(mnt, "o/shown")); err != nil {
		t.Errorf("o/shown: %v", err)
	}
}

func mkdir(t *testing.T, parent, name string) string {
	t.Helper()
	p := filepath.Join(parent, name)
	must(t, os.MkdirAll(p, 0o755))
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
