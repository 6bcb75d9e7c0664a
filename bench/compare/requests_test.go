package main

import (
	"os"
	"path/filepath"
	"testing"
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
