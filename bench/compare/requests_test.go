package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/strata-fs/strata/bench/target"
	"golang.org/x/sys/unix"
)

// A trace whose buffer overflowed: the kinds come from the lines left,
// the total from the header's count of entries written.
func TestReadRequestCount(t *testing.T) {
	trace := `# tracer: nop
#
# entries-in-buffer/entries-written: 4/7   #P:2
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
              ls-1     [000] ..... 10.000001: fuse_request_send: connection 40 req 2 opcode 22 (FUSE_GETXATTR) len 68
              ls-1     [000] ..... 10.000002: fuse_request_send: connection 40 req 4 opcode 22 (FUSE_GETXATTR) len 68
              ls-1     [001] ..... 10.000003: fuse_request_send: connection 40 req 6 opcode 3 (FUSE_GETATTR) len 56
              ls-1     [001] ..... 10.000004: fuse_request_send: connection 40 req 8 opcode 44 (FUSE_READDIRPLUS) len 80
`
	path := filepath.Join(t.TempDir(), "trace")
	if err := os.WriteFile(path, []byte(trace), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := readRequestCount(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Total != 7 {
		t.Errorf("total %d, want 7 (the entries written)", c.Total)
	}
	if c.ByKind["FUSE_GETXATTR"] != 2 || c.ByKind["FUSE_GETATTR"] != 1 || c.ByKind["FUSE_READDIRPLUS"] != 1 || len(c.ByKind) != 3 {
		t.Errorf("kinds %v", c.ByKind)
	}
	if got, want := c.topKinds(2), "GETXATTR 2, GETATTR 1, …"; got != want {
		t.Errorf("topKinds(2) = %q, want %q", got, want)
	}
}

func TestGroupThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 49867: "49,867", 1234567: "1,234,567"} {
		if got := groupThousands(n); got != want {
			t.Errorf("groupThousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// On two FUSE mounts at once, the tracer counts the requests of the one
// it is pointed at, and all of them.
func TestRequestTracerCountsOneMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("tracing and mounting need root")
	}
	if _, err := exec.LookPath("fuse-overlayfs"); err != nil {
		t.Skip("fuse-overlayfs not installed")
	}
	tracer, err := newRequestTracer()
	if err != nil {
		t.Skipf("no request counts on this kernel: %v", err)
	}
	t.Cleanup(func() {
		if err := tracer.close(); err != nil {
			t.Error(err)
		}
	})
	counted, other := mountOneFile(t), mountOneFile(t)
	getxattrs := func(dir string, n int) {
		var buf [64]byte
		for range n {
			unix.Lgetxattr(filepath.Join(dir, "f"), "user.strata-absent", buf[:])
		}
	}
	// The path is looked up before the step, so the step asks for
	// nothing but the xattr.
	getxattrs(counted, 1)
	getxattrs(other, 1)
	c, stepErr, traceErr := tracer.count(counted, func() error {
		getxattrs(counted, 100)
		getxattrs(other, 50)
		return nil
	})
	if stepErr != nil || traceErr != nil {
		t.Fatal(stepErr, traceErr)
	}
	if c.ByKind["FUSE_GETXATTR"] != 100 || c.Total < 100 || c.Total >= 150 {
		t.Fatalf("counted %d requests (%v), want the 100 GETXATTRs of one mount", c.Total, c.ByKind)
	}
}

// mountOneFile mounts fuse-overlayfs over a layer holding the file f and
// returns the mount point; the mount goes when the test ends.
func mountOneFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	spec := target.Spec{Lowers: []string{filepath.Join(dir, "lower")}, Upper: filepath.Join(dir, "upper"),
		Work: filepath.Join(dir, "work"), Dir: filepath.Join(dir, "mnt")}
	for _, d := range []string{spec.Lowers[0], spec.Upper, spec.Work, spec.Dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(spec.Lowers[0], "f"), []byte("f"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := target.New(target.FuseOverlayfs, spec, target.Binaries{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return spec.Dir
}
