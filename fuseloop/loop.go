// Package fuseloop reads FUSE requests from a /dev/fuse descriptor and
// answers them with a go-fuse RawFileSystem, on as few threads as the
// load allows.
//
// # Why not go-fuse's own loop
//
// go-fuse keeps at least one goroutine blocked in read(2) on /dev/fuse
// while another handles a request. Every request that arrives while one
// is being handled then wakes a second thread, and the kernel hands
// consecutive requests to alternating threads. On a small virtual
// machine a thread wake-up costs more than most requests: grep -r over a
// freshly unpacked tree spent half of the daemon's CPU time in context
// switches, twice as many as a single-threaded server.
//
// # Threads
//
// One goroutine at a time is the reader: it reads a request and handles
// it inline, then reads the next, so back-to-back requests are served
// without waking anyone. Another goroutine becomes the reader when
//
//   - the request may take long or wait without bound (a blocking lock,
//     fsync, data copy-up on an open for writing, FUSE-served reads and
//     writes, link and rename, which can copy up): the reader starts a
//     new reader first and ends after answering;
//   - an inline request is still running after stallAfter (5 ms) (a cold disk, a
//     slow backing filesystem): the stall guard starts a new reader, and
//     the stalled goroutine ends after answering.
//
// The reader token is inlineSince: the start time of the request the
// reader handles inline, or 0. Whoever swaps it from that start time to 0
// decides: the reader that finishes first keeps reading, the guard that
// gets there first hands reading to a new goroutine.
//
// # FUSE over io_uring
//
// Where the kernel offers it (fuse.enable_uring=Y, kernel 6.14 and
// later) and Options.Uring asks for it, Mount makes one io_uring per
// possible CPU before mounting and offers FUSE_OVER_IO_URING in INIT;
// the kernel then holds requests until every CPU's queue has entries,
// and delivers each request on the queue of the CPU that made it
// (ring.go). A queue's entries are request slots: a header buffer and a
// payload buffer registered with the kernel; one io_uring_enter commits
// an answer and fetches the next request, where /dev/fuse takes a
// read(2) and a writev(2).
//
// Each queue has one reaper at a time, a thread locked and pinned to the
// queue's CPU, which serves requests inline like the /dev/fuse reader,
// so a request is answered on the CPU that is waiting for it. Unpinned,
// rings were slower than /dev/fuse (untar of /usr/include onto tmpfs
// layers 5.3-6.1 s against 3.5-4.7 s); pinned, faster (3.3-3.5 s, and
// rm -rf of it 0.84-0.89 s against 1.0-1.8 s). Requests that may wait go
// to a goroutine, which hands the answered entry back to the reaper (a
// write to an eventfd whose read the reaper keeps armed wakes it); the
// stall guard hands the reaper role to another pinned thread, as it hands
// reading to another reader. Only reaper threads submit entries, because
// the kernel copies each request into its entry as task work on the
// thread that submitted the entry, and a thread's exit cancels the
// entries it submitted: reaper threads park, and end only with the queue.
//
// The kernel gives a request that found no free entry only to an entry
// that commits, never to one registered later. When requests that wait
// (locks, fsync) hold most of a queue's entries, the reaper registers
// more and "kicks" the queue with a statfs of the mount made on its CPU,
// whose commit hands a queued request on (ringQueue.kick).
//
// FORGET and INTERRUPT still come through /dev/fuse, whose reader keeps
// running; so do all requests if registering fails, as it does when
// the kernel refuses the buffers.
//
// Once the rings serve, that reader sees nothing but FORGETs (interrupts
// are off, below), and each FORGET it is waiting for is a thread wake-up
// paid by the process that let the inode go: rm -rf of 10,000 files made
// 8,776 FORGET requests. So after a FORGET request that carried fewer
// than forgetBatchBig forgets, the reader pauses for forgetPause before
// it reads again; the
// kernel queues the forgets meanwhile without waking anyone and hands
// them over in one BATCH_FORGET. A request of forgetBatchBig or more is
// followed by the next read at once, so a burst (drop_caches forgetting a
// million inodes) is read as fast as the reader can, and no forget waits
// longer than about forgetPause. rm -rf of 10,000 files onto tmpfs
// layers took 440-503 ms instead of 535-593 ms.
//
// # Reapers at idle priority
//
// A reaper's commit wakes the process waiting for the answer while the
// reaper is still running on that CPU. The scheduler then places the
// woken process on another CPU if one is idle, rather than behind a
// running task, so a process that is the only busy one on the machine
// moved to the other CPU with every answer: 48,000-57,000 migrations in a
// warm ls -lR of a 50,000-entry image (60,000 requests), each a
// cross-CPU wake-up, where the /dev/fuse loop made 87. A CPU whose only
// running task is SCHED_IDLE counts as idle for that choice, so reapers
// run as SCHED_IDLE: the woken process stays, preempts the reaper, and
// the next request goes to the same queue. On the 2-CPU test machine the
// warm ls -lR took 1.3-1.4 s instead of 2.9-3.5 s, an untar of 10,000
// small files onto tmpfs layers 1.5 s instead of 2.7-3.0 s. But when
// every CPU is busy, an idle-class reaper waits longer for its turn than
// a normal one: with two CPU-bound processes per CPU the warm ls -lR took
// 2.6 s instead of 2.1 s, the untar 2.4-2.7 s instead of 1.7-2.0 s; the
// idle class has the smallest scheduling weight there is, so the more
// normal work competes for the CPU, the longer the reaper waits. So by
// default (ReaperAuto) reapers are in the idle class only while requests
// flow and that leaves CPU time to spare: the guard samples the machine's
// CPU times every 100 ms while it is awake and moves the reaper threads
// (by thread id) between the classes, trying the idle class again now
// and then while in the normal class, and puts them back in the normal
// class before it sleeps and when the connection ends (sched.go).
// ReaperIdle and ReaperNormal fix the class (strata's -o
// io_uring_sched=idle|normal). Only reaper threads change class: they
// stay locked to their goroutine for life, so no other goroutine ever
// runs on them.
//
// # Protocol
//
// go-fuse mounts, negotiates INIT and sends notifications on the same
// descriptor (the server is created on the magic /dev/fd/N mount point
// and never serves). Requests are decoded into go-fuse's In structs,
// which mirror the kernel ABI; the fixed part of each request is copied
// into a zeroed buffer first, because some kernel structs are shorter
// than go-fuse's (RENAME's fuse_rename_in, SETXATTR without
// SETXATTR_EXT). INTERRUPT is answered ENOSYS, which turns interrupts off
// for the connection: no handler here can be cancelled, and answering
// them costs a round trip each (Go programs get them from the runtime's
// preemption signals).
package fuseloop

import (
	"log"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Options tune a Loop.
type Options struct {
	// MaxWrite is the mount's max_write: the largest WRITE payload.
	MaxWrite int
	// Debug logs every request and reply.
	Debug  bool
	Logger *log.Logger
	// Uring asks Mount for FUSE over io_uring where the kernel offers it.
	Uring bool
	// ReaperClass is the scheduling class of the threads that answer ring
	// requests (see "Reapers at idle priority" in the package doc).
	ReaperClass ReaperClass
	// Negotiated, if set, is called by Mount once INIT is answered and
	// before any other request is served.
	Negotiated func(*fuse.Server)
}

// stallAfter is how long an inline request may run before another
// goroutine starts reading; stallCheck is how often the guard looks while
// requests come in. Each check is a timer wake-up, which costs a thread
// wake-up of its own: at 2 ms the guard made a quarter of the daemon's
// futex calls during an untar. After idleRounds checks that found nothing
// served and nothing running, the guard sleeps until a request starts
// (requestStarted), so an idle mount makes no wake-ups at all.
const (
	stallAfter = 5 * time.Millisecond
	stallCheck = 5 * time.Millisecond
	idleRounds = 25
)

// Loop serves one FUSE connection.
type Loop struct {
	fd    int
	fs    fuse.RawFileSystem
	opts  Options
	epoch time.Time

	inlineSince atomic.Int64  // reader token, see the package doc
	served      atomic.Uint64 // requests read, for the guard's pace
	ringServed  atomic.Uint64 // of those, requests that came through a ring
	guardAsleep atomic.Bool   // the guard waits on guardWake for a request
	guardWake   chan struct{} // buffered 1
	reapers     reaperThreads // the rings' threads and their class (sched.go)
	done        chan struct{} // closed when the connection ends
	doneOnce    sync.Once
	goroutines  sync.WaitGroup
	buffers     sync.Pool // *[]byte of bufSize
	bufSize     int
	rings       *rings // nil without FUSE over io_uring
}

// Serve starts serving the connection on fd and returns at once; Wait
// returns when the connection has ended and every request is answered.
// The caller keeps fd open until then.
func Serve(fd int, fs fuse.RawFileSystem, opts Options) *Loop {
	return serve(fd, fs, opts, nil)
}

// serve starts the /dev/fuse readers and, with rs, the ring queues.
func serve(fd int, fs fuse.RawFileSystem, opts Options, rs *rings) *Loop {
	if opts.Logger == nil {
		opts.Logger = log.New(os.Stderr, "", log.LstdFlags)
	}
	l := &Loop{fd: fd, fs: fs, opts: opts, epoch: time.Now(), done: make(chan struct{}), guardWake: make(chan struct{}, 1), rings: rs}
	// The kernel refuses reads into buffers that cannot hold a header,
	// a WRITE's arguments and max_write bytes of data.
	l.bufSize = max(opts.MaxWrite, 128<<10) + 4096
	l.buffers.New = func() any { b := make([]byte, l.bufSize); return &b }
	l.reapers.init(l)
	l.goroutines.Add(2)
	go l.guard()
	go l.read()
	if rs != nil {
		rs.start(l)
	}
	return l
}

// Wait blocks until the connection has ended and all handlers returned.
func (l *Loop) Wait() { l.goroutines.Wait() }

// now is a monotonic clock that never returns 0 (0 means "no token").
func (l *Loop) now() int64 { return int64(time.Since(l.epoch)) + 1 }

// startReader makes a new goroutine the reader.
func (l *Loop) startReader() {
	l.goroutines.Add(1)
	go l.read()
}

// read is the reader's loop (see the package doc).
func (l *Loop) read() {
	defer l.goroutines.Done()
	bp := l.buffers.Get().(*[]byte)
	defer l.buffers.Put(bp)
	r := &request{loop: l}
	for {
		n, err := l.readRequest(*bp)
		if err != nil {
			l.end(err)
			return
		}
		if n == 0 {
			continue
		}
		l.requestStarted()
		d := l.decode((*bp)[:n], r)
		if d.status == fuse.OK && mayBlock(r) {
			l.startReader()
			l.handle(d, r)
			return
		}
		start := l.now()
		l.inlineSince.Store(start)
		l.handle(d, r)
		if !l.inlineSince.CompareAndSwap(start, 0) {
			return // the guard made another goroutine the reader
		}
		if l.ringServed.Load() > 0 && forgetsIn(r) < forgetBatchBig {
			time.Sleep(forgetPause)
		}
	}
}

// How the /dev/fuse reader waits for FORGETs while the rings serve
// everything else (see "FUSE over io_uring" in the package doc).
const (
	forgetPause    = 20 * time.Millisecond
	forgetBatchBig = 256
)

// forgetsIn is the number of forgets a request carries: 1 for FORGET, the
// count of a BATCH_FORGET, and forgetBatchBig for any other request, after
// which the reader does not pause.
func forgetsIn(r *request) int {
	switch r.hdr.Opcode {
	case opForget:
		return 1
	case opBatchForget:
		return batchForgetCount(r)
	}
	return forgetBatchBig
}

// readRequest reads one request; n == 0 with a nil error means "read
// again" (the kernel dropped an interrupted request, or a signal came).
func (l *Loop) readRequest(buf []byte) (int, error) {
	n, err := syscall.Read(l.fd, buf)
	switch {
	case err == syscall.EINTR || err == syscall.ENOENT || err == syscall.EAGAIN:
		return 0, nil
	case err != nil:
		return 0, err
	case n < int(unsafe.Sizeof(fuse.InHeader{})):
		l.opts.Logger.Printf("fuseloop: short request of %d bytes", n)
		return 0, nil
	}
	return n, nil
}

// end records that the connection is over. ENODEV is the normal end
// (unmounted or aborted).
func (l *Loop) end(err error) {
	if err != syscall.ENODEV {
		l.opts.Logger.Printf("fuseloop: reading /dev/fuse: %v", err)
	}
	l.doneOnce.Do(func() { close(l.done) })
}

// guard hands reading to a new goroutine when an inline request stalls.
func (l *Loop) guard() {
	defer l.goroutines.Done()
	timer := time.NewTimer(stallCheck)
	defer timer.Stop()
	lastServed, quiet := l.served.Load(), 0
	var class classSampler
	for {
		select {
		case <-l.done:
			l.reapers.set(false) // the rings' teardown must not wait for a busy CPU
			return
		case <-timer.C:
		}
		class.tick(l)
		if l.stalled(&l.inlineSince) {
			l.startReader()
		}
		busy := l.inlineSince.Load() != 0
		if l.rings != nil {
			for _, q := range l.rings.queues {
				if l.stalled(&q.since) {
					q.handOff()
				}
				busy = busy || q.since.Load() != 0
			}
		}
		served := l.served.Load()
		if served == lastServed && !busy {
			quiet++
		} else {
			quiet = 0
		}
		lastServed = served
		if quiet > idleRounds {
			class.sleeping(l)
			if !l.sleepUntilRequest(lastServed) {
				l.reapers.set(false)
				return
			}
			lastServed, quiet = l.served.Load(), 0
		}
		timer.Reset(stallCheck)
	}
}

// sleepUntilRequest parks the guard until a request starts after the
// served count seen was read; false means the connection ended.
func (l *Loop) sleepUntilRequest(seen uint64) bool {
	l.guardAsleep.Store(true)
	// A request that started before the flag was set did not see it; the
	// count shows it. (Both sides write, then read the other's variable,
	// so at least one of them sees the other.)
	if l.served.Load() != seen && l.guardAsleep.CompareAndSwap(true, false) {
		return true
	}
	select {
	case <-l.done:
		return false
	case <-l.guardWake:
		return true
	}
}

// requestStarted counts a request and wakes the guard if it sleeps.
func (l *Loop) requestStarted() {
	l.served.Add(1)
	if l.guardAsleep.Load() && l.guardAsleep.CompareAndSwap(true, false) {
		select {
		case l.guardWake <- struct{}{}:
		default:
		}
	}
}

// stalled takes the reader token when its request has run for stallAfter;
// the caller then makes another goroutine the reader.
func (l *Loop) stalled(token *atomic.Int64) bool {
	since := token.Load()
	return since != 0 && l.now()-since >= int64(stallAfter) && token.CompareAndSwap(since, 0)
}

// reply sends the answer to the request with the given unique id: the
// header, the fixed out struct and the payload, in one writev.
func (l *Loop) reply(unique uint64, status fuse.Status, out, data []byte) {
	if status != fuse.OK {
		out, data = nil, nil
	}
	var hdr fuse.OutHeader
	hdr.Unique = unique
	hdr.Status = -int32(status)
	hdr.Length = uint32(int(unsafe.Sizeof(hdr)) + len(out) + len(data))
	iov := [3]unix.Iovec{{Base: (*byte)(unsafe.Pointer(&hdr))}}
	iov[0].SetLen(int(unsafe.Sizeof(hdr)))
	cnt := 1
	for _, b := range [][]byte{out, data} {
		if len(b) > 0 {
			iov[cnt].Base = &b[0]
			iov[cnt].SetLen(len(b))
			cnt++
		}
	}
	_, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(l.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(cnt))
	// ENOENT: the request was interrupted or the mount went away meanwhile.
	if errno != 0 && errno != unix.ENOENT && errno != unix.ENODEV {
		l.opts.Logger.Printf("fuseloop: reply to %d: %v", unique, errno)
	}
	if l.opts.Debug {
		l.opts.Logger.Printf("tx %d: %v, %d+%d bytes", unique, status, len(out), len(data))
	}
}

// decoded is a request's opcode and whether its arguments made sense.
type decoded struct {
	op     *op
	status fuse.Status
}

// decode reads one request from /dev/fuse into r.
func (l *Loop) decode(req []byte, r *request) decoded {
	o := opFor((*fuse.InHeader)(unsafe.Pointer(&req[0])).Opcode)
	return decoded{o, r.decode(req, o)}
}

// handle serves and answers one decoded request from /dev/fuse.
func (l *Loop) handle(d decoded, r *request) {
	unique := r.hdr.Unique
	if l.opts.Debug {
		l.opts.Logger.Printf("rx %d: %s n%d %q", unique, d.op.name, r.hdr.NodeId, r.names[:d.op.names])
	}
	status := d.status
	if status == fuse.OK {
		status = l.serve(r, d.op)
	}
	if !d.op.noReply {
		l.reply(unique, status, r.out, r.data)
	}
	r.finish()
}

// finish releases what the answered request held and readies r for the
// next one.
func (r *request) finish() {
	if r.result != nil {
		r.result.Done()
	}
	if r.pooled != nil {
		r.loop.buffers.Put(r.pooled)
	}
	r.reset()
}

// serve calls the operation, turning a panic into EIO so that one bad
// request does not take the mount down.
func (l *Loop) serve(r *request, o *op) (status fuse.Status) {
	defer func() {
		if p := recover(); p != nil {
			l.opts.Logger.Printf("fuseloop: %s panicked: %v", o.name, p)
			status = fuse.EIO
		}
	}()
	if o.serve == nil {
		return fuse.ENOSYS
	}
	return o.serve(r)
}

// replyBuffer returns a buffer of n bytes for a reply that has no fixed
// out struct: for a ring request, its entry's payload, which the reply is
// then not copied into.
func (r *request) replyBuffer(n int) []byte {
	if r.ent != nil && n <= len(r.ent.payload) {
		return r.ent.payload[:n]
	}
	return r.payloadBuffer(n)
}

// payloadBuffer returns a pooled buffer of n bytes for a reply payload.
func (r *request) payloadBuffer(n int) []byte {
	if n > r.loop.bufSize {
		return make([]byte, n)
	}
	bp := r.loop.buffers.Get().(*[]byte)
	r.pooled = bp
	return (*bp)[:n]
}
