package fs

import (
	"errors"
	"testing"
	"unsafe"
)

// A node is allocated for every inode the kernel holds, so its size is most
// of the daemon's memory on a big tree. Go rounds an allocation up to its
// size class; growing the node past 128 bytes moves every node to the
// 144-byte class or beyond. Fields a directory alone needs go to dirState.
func TestNodeFitsAllocationClass(t *testing.T) {
	if size := unsafe.Sizeof(node{}); size > 128 {
		t.Fatalf("node is %d bytes, more than the 128-byte allocation class", size)
	}
}

// A listing keeps a lowerEntry per name of every directory the kernel
// holds; it stays packed in 24 bytes.
func TestLowerEntryIsPacked(t *testing.T) {
	if size := unsafe.Sizeof(lowerEntry{}); size > 24 {
		t.Fatalf("lowerEntry is %d bytes, more than 24", size)
	}
}

// A stack deeper than a lowerEntry can number is refused before anything
// is opened.
func TestTooManyLowersRefused(t *testing.T) {
	dir := t.TempDir()
	lowers := make([]string, maxLowers+1)
	for i := range lowers {
		lowers[i] = dir
	}
	if _, err := newUnion(Config{Lowers: lowers}); !errors.Is(err, ErrTooManyLowers) {
		t.Fatalf("newUnion with %d lowers: %v, want %v", len(lowers), err, ErrTooManyLowers)
	}
	if _, err := newUnion(Config{Lowers: lowers[:maxLowers]}); errors.Is(err, ErrTooManyLowers) {
		t.Fatalf("newUnion with %d lowers refused as too many", maxLowers)
	}
}
