package fs

import (
	"runtime"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Yielding /dev/fuse readers.
//
// Requests are served on the goroutine that read them (fuseloop; go-fuse's
// own loop for unprivileged mounts), and that goroutine goes straight back
// to read(2) on /dev/fuse. To Go's scheduler
// such a reader is one goroutine that never stops running: system calls
// that return quickly keep their P and do not count as scheduling. After
// 10 ms of that, the runtime's sysmon thread preempts it with a signal and
// takes its P away, and every such take-back makes sysmon poll again every
// 20 µs for the next millisecond and more. During a warm ls -lR that was
// 4,000 sysmon wake-ups and 130 preemption signals a second, each one a
// context switch on a 2-CPU machine where the requests themselves are
// context switches.
//
// So a reader yields (runtime.Gosched) when the P it runs on has not been
// through the scheduler for yieldEvery: sysmon then finds nothing to take
// back and backs off to sleeping 10 ms. The clock is kept per P, as sysmon
// watches Ps, through a sync.Pool (whose Get and Put use the current P's
// own slot, without locks); a clock the pool drops at a collection comes
// back as zero, which only means one early yield. Each yield wakes an idle
// thread to look for work (two futex calls), so it is as rare as sysmon's
// 10 ms limit allows: 8 ms halved the futex calls of 4 ms.
const yieldEvery = 8 * time.Millisecond

var clockBase = time.Now()

type yieldClock struct{ last time.Duration }

var yieldClocks = sync.Pool{New: func() any { return new(yieldClock) }}

// yieldIfDue yields the calling reader if its P is due.
func yieldIfDue() {
	if !stampClock(false) {
		return
	}
	runtime.Gosched()
	// The reader may go on on another P, which has just scheduled it:
	// stamp that one too, or the reader would yield again at once.
	stampClock(true)
}

// stampClock sets the current P's clock to now if it is due or always is
// set, and reports whether it was due.
func stampClock(always bool) bool {
	now := time.Since(clockBase)
	c := yieldClocks.Get().(*yieldClock)
	due := now-c.last >= yieldEvery
	if due || always {
		c.last = now
	}
	yieldClocks.Put(c)
	return due
}

// yieldingFS calls yieldIfDue before the requests that come in long
// streams (metadata walks, unpacking, reading through FUSE), then serves
// them from the wrapped filesystem.
type yieldingFS struct {
	fuse.RawFileSystem
}

func (y yieldingFS) Lookup(cancel <-chan struct{}, in *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Lookup(cancel, in, name, out)
}

func (y yieldingFS) Forget(node, nlookup uint64) {
	yieldIfDue()
	y.RawFileSystem.Forget(node, nlookup)
}

func (y yieldingFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.GetAttr(cancel, in, out)
}

func (y yieldingFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.SetAttr(cancel, in, out)
}

func (y yieldingFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Statx(cancel, in, out)
}

func (y yieldingFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Access(cancel, in)
}

func (y yieldingFS) Readlink(cancel <-chan struct{}, in *fuse.InHeader) ([]byte, fuse.Status) {
	yieldIfDue()
	return y.RawFileSystem.Readlink(cancel, in)
}

func (y yieldingFS) GetXAttr(cancel <-chan struct{}, in *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	yieldIfDue()
	return y.RawFileSystem.GetXAttr(cancel, in, attr, dest)
}

func (y yieldingFS) ListXAttr(cancel <-chan struct{}, in *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	yieldIfDue()
	return y.RawFileSystem.ListXAttr(cancel, in, dest)
}

func (y yieldingFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Mknod(cancel, in, name, out)
}

func (y yieldingFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (y yieldingFS) Symlink(cancel <-chan struct{}, in *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Symlink(cancel, in, target, name, out)
}

func (y yieldingFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Link(cancel, in, name, out)
}

func (y yieldingFS) Unlink(cancel <-chan struct{}, in *fuse.InHeader, name string) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Unlink(cancel, in, name)
}

func (y yieldingFS) Rmdir(cancel <-chan struct{}, in *fuse.InHeader, name string) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Rmdir(cancel, in, name)
}

func (y yieldingFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (y yieldingFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Create(cancel, in, name, out)
}

func (y yieldingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Open(cancel, in, out)
}

func (y yieldingFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	yieldIfDue()
	return y.RawFileSystem.Read(cancel, in, buf)
}

func (y yieldingFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	yieldIfDue()
	return y.RawFileSystem.Write(cancel, in, data)
}

func (y yieldingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	yieldIfDue()
	y.RawFileSystem.Release(cancel, in)
}

func (y yieldingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Flush(cancel, in)
}

func (y yieldingFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.Fsync(cancel, in)
}

func (y yieldingFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.ReadDir(cancel, in, out)
}

func (y yieldingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (y yieldingFS) StatFs(cancel <-chan struct{}, in *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	yieldIfDue()
	return y.RawFileSystem.StatFs(cancel, in, out)
}
