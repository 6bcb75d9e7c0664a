package fs

import (
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
