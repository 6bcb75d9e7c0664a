package fs

import (
	"sync"
	"sync/atomic"
	"syscall"
)

// Directories are read without opens.
//
// kernelFS answers OPENDIR with ENOSYS. The kernel then never sends
// OPENDIR or RELEASEDIR again on this connection and treats every
// directory as opened with FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR
// (fuse_file_open's default): listings stay in the kernel's cache across
// opens, and opening a directory costs no round trip at all. Without this,
// every opendir(3) cost two (find and ls -R open every directory of the
// tree).
//
// READDIR(PLUS) then always arrives with file handle 0 and an offset, and
// nothing tells two readers of one directory apart. That is sound because
// offsets are name cookies (readdir.go): any snapshot of the current
// listing answers "the entries after cookie N" correctly. So dirCursors
// keeps one snapshot (a dirHandle) per directory, shared by its readers,
// which take turns on it (dirHandle.mu) and each seek to their own offset.
// A snapshot is stamped with the namespace generation, which every create,
// link, unlink and rename through the mount bumps; a stale one is replaced
// by a fresh one. A snapshot is dropped when a read reaches the end of the
// listing (the kernel has it all by then), when it goes stale, and when the
// kernel forgets the directory.
//
// FSYNCDIR always arrives with handle 0 too and needs no snapshot.
type dirCursors struct {
	// gen is the namespace generation, bumped after every operation that
	// changes a directory's entries.
	gen atomic.Uint64

	mu      sync.Mutex
	cursors map[uint64]*dirCursor // by directory node id
}

// dirCursor is a snapshot shared by the readers of one directory. Guarded
// by dirCursors.mu.
type dirCursor struct {
	h   *dirHandle
	gen uint64 // namespace generation before the snapshot was taken
}

func newDirCursors() *dirCursors {
	return &dirCursors{cursors: map[uint64]*dirCursor{}}
}

// changed records that a directory's entries changed; called once the
// change is done, so no later read is served from an older snapshot.
func (d *dirCursors) changed() { d.gen.Add(1) }

// take returns the snapshot of directory n, whose node id is id, taking a
// fresh one if there is none or the namespace changed since it was taken.
func (d *dirCursors) take(n *node, id uint64) (*dirHandle, syscall.Errno) {
	gen := d.gen.Load()
	d.mu.Lock()
	if c := d.cursors[id]; c != nil && c.gen == gen {
		d.mu.Unlock()
		return c.h, 0
	}
	d.mu.Unlock()

	h, errno := n.openDirHandle()
	if errno != 0 {
		return nil, errno
	}
	d.mu.Lock()
	d.cursors[id] = &dirCursor{h: h, gen: gen}
	d.mu.Unlock()
	return h, 0
}

// put ends a read; done says the reader reached the end of the listing,
// and the snapshot is dropped unless a newer one replaced it.
func (d *dirCursors) put(id uint64, h *dirHandle, done bool) {
	if !done {
		return
	}
	d.mu.Lock()
	if c := d.cursors[id]; c != nil && c.h == h {
		delete(d.cursors, id)
	}
	d.mu.Unlock()
}

// forget drops the snapshot of a directory the kernel forgot.
func (d *dirCursors) forget(id uint64) {
	d.mu.Lock()
	delete(d.cursors, id)
	d.mu.Unlock()
}
