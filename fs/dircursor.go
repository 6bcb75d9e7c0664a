package fs

import (
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// openlessDirs sits between the FUSE server and go-fuse's node bridge and
// takes OPENDIR and RELEASEDIR out of the protocol.
//
// It answers OPENDIR with ENOSYS. The kernel then never sends OPENDIR or
// RELEASEDIR again on this connection and treats every directory as opened
// with FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR (fuse_file_open's default): listings
// stay in the kernel's cache across opens, and opening a directory costs no
// round trip at all. Without this, every opendir(3) cost two (find and
// ls -R open every directory of the tree).
//
// READDIR(PLUS) then always arrives with file handle 0 and an offset, and nothing
// tells two readers of one directory apart. That is sound because offsets
// are name cookies (readdir.go): any snapshot of the current listing
// answers "the entries after cookie N" correctly. The bridge serves
// listings only through open handles, so the wrapper keeps one handle per
// directory, shared by its readers (the bridge serializes them and each
// read seeks to its own offset). A handle is stamped with the namespace
// generation, which every create, link, unlink and rename through the
// mount bumps; a stale one is replaced by a fresh snapshot. A handle is
// released when a read reaches the end of the listing (the kernel has it
// all by then), when it goes stale, and when the kernel forgets the
// directory.
//
// FSYNCDIR always arrives with handle 0 too and is served through a handle opened
// for the call.
type openlessDirs struct {
	fuse.RawFileSystem

	// gen is the namespace generation, bumped after every operation that
	// changes a directory's entries.
	gen atomic.Uint64

	mu      sync.Mutex
	cursors map[uint64]*dirCursor // by directory node id
	unused  []dirRef              // dropped handles to release
}

// dirRef names a bridge directory handle.
type dirRef struct{ node, fh uint64 }

// dirCursor is a bridge directory handle shared by the readers of one
// directory. Guarded by openlessDirs.mu.
type dirCursor struct {
	fh      uint64
	gen     uint64 // namespace generation before the snapshot was taken
	users   int    // reads in progress
	dropped bool   // out of the map; released by the last user
}

func newOpenlessDirs(raw fuse.RawFileSystem) *openlessDirs {
	return &openlessDirs{RawFileSystem: raw, cursors: map[uint64]*dirCursor{}}
}

func (o *openlessDirs) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (o *openlessDirs) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return o.read(cancel, in, out, o.RawFileSystem.ReadDir)
}

func (o *openlessDirs) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return o.read(cancel, in, out, o.RawFileSystem.ReadDirPlus)
}

type readDirFunc func(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status

func (o *openlessDirs) read(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, readDir readDirFunc) fuse.Status {
	c, st := o.take(cancel, &in.InHeader)
	if !st.Ok() {
		return st
	}
	req := *in
	req.Fh = c.fh
	st = readDir(cancel, &req, out)
	// An error, or nothing added: the end of the listing.
	o.put(in.NodeId, c, !st.Ok() || out.Offset == in.Offset)
	return st
}

// take returns the directory's handle, opening a fresh one if there is
// none or the namespace changed since its snapshot.
func (o *openlessDirs) take(cancel <-chan struct{}, in *fuse.InHeader) (*dirCursor, fuse.Status) {
	gen := o.gen.Load()
	o.mu.Lock()
	if c := o.cursors[in.NodeId]; c != nil {
		if c.gen == gen {
			c.users++
			o.mu.Unlock()
			return c, fuse.OK
		}
		o.dropLocked(in.NodeId, c)
	}
	o.mu.Unlock()
	o.releaseUnused()

	fh, st := o.openHandle(cancel, in)
	if !st.Ok() {
		return nil, st
	}
	c := &dirCursor{fh: fh, gen: gen, users: 1}
	o.mu.Lock()
	if old := o.cursors[in.NodeId]; old != nil {
		o.dropLocked(in.NodeId, old)
	}
	o.cursors[in.NodeId] = c
	o.mu.Unlock()
	o.releaseUnused()
	return c, fuse.OK
}

// put ends a read; done says the reader reached the end of the listing.
func (o *openlessDirs) put(node uint64, c *dirCursor, done bool) {
	o.mu.Lock()
	c.users--
	if done {
		o.dropLocked(node, c)
	} else if c.dropped && c.users == 0 {
		o.unused = append(o.unused, dirRef{node, c.fh})
	}
	o.mu.Unlock()
	o.releaseUnused()
}

// dropLocked takes c out of the map. With no reader left it joins the
// handles to release (after o.mu is let go); else its last reader's put
// does that. Caller holds o.mu.
func (o *openlessDirs) dropLocked(node uint64, c *dirCursor) {
	if o.cursors[node] == c {
		delete(o.cursors, node)
	}
	if c.dropped {
		return
	}
	c.dropped = true
	if c.users == 0 {
		o.unused = append(o.unused, dirRef{node, c.fh})
	}
}

// releaseUnused releases the handles dropLocked and put set aside.
func (o *openlessDirs) releaseUnused() {
	o.mu.Lock()
	refs := o.unused
	o.unused = nil
	o.mu.Unlock()
	for _, r := range refs {
		o.release(r.node, r.fh)
	}
}

func (o *openlessDirs) openHandle(cancel <-chan struct{}, in *fuse.InHeader) (uint64, fuse.Status) {
	var open fuse.OpenOut
	st := o.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: *in}, &open)
	return open.Fh, st
}

func (o *openlessDirs) release(node, fh uint64) {
	o.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: node}, Fh: fh})
}

func (o *openlessDirs) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	fh, st := o.openHandle(cancel, &in.InHeader)
	if !st.Ok() {
		return st
	}
	defer o.release(in.NodeId, fh)
	req := *in
	req.Fh = fh
	return o.RawFileSystem.FsyncDir(cancel, &req)
}

// Forget drops the directory's handle first: the kernel sends no more
// reads for a node it forgot, and the bridge must not keep handles of a
// node it is about to free.
func (o *openlessDirs) Forget(node, nlookup uint64) {
	o.mu.Lock()
	if c := o.cursors[node]; c != nil {
		o.dropLocked(node, c)
	}
	o.mu.Unlock()
	o.releaseUnused()
	o.RawFileSystem.Forget(node, nlookup)
}

// The operations that change a directory's entries bump the generation
// once they are done, so no later read is served from an older snapshot.

func (o *openlessDirs) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Create(cancel, in, name, out)
}

func (o *openlessDirs) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Mknod(cancel, in, name, out)
}

func (o *openlessDirs) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (o *openlessDirs) Symlink(cancel <-chan struct{}, header *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Symlink(cancel, header, target, name, out)
}

func (o *openlessDirs) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Link(cancel, in, name, out)
}

func (o *openlessDirs) Unlink(cancel <-chan struct{}, header *fuse.InHeader, name string) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Unlink(cancel, header, name)
}

func (o *openlessDirs) Rmdir(cancel <-chan struct{}, header *fuse.InHeader, name string) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Rmdir(cancel, header, name)
}

func (o *openlessDirs) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	defer o.gen.Add(1)
	return o.RawFileSystem.Rename(cancel, in, oldName, newName)
}
