package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE over io_uring (include/uapi/linux/fuse.h, fs/fuse/dev_uring.c).
const (
	uringCmdRegister       = 1 // FUSE_IO_URING_CMD_REGISTER
	uringCmdCommitAndFetch = 2 // FUSE_IO_URING_CMD_COMMIT_AND_FETCH

	// struct fuse_uring_req_header: the in/out header, the opcode's
	// fixed arguments, then struct fuse_uring_ent_in_out.
	ringOpInOffset    = 128
	ringEntInOutOff   = 256
	ringHeaderSize    = 288
	ringHeaderMapSize = 4096

	// Entries each queue registers at the start, the fewest it keeps
	// free for new requests (registering more when requests that wait
	// hold the others), and the most it registers. An entry costs its
	// buffers' address space; the kernel hands out the most recently
	// freed entry first, so only a few are ever touched.
	ringInitialEntries = 32
	ringSpareEntries   = 16
	ringMaxEntries     = 1024

	// Submission slots per queue (commits, registrations and the
	// wake-up read are submitted as they are made) and completion
	// slots, which must hold one per entry.
	ringSQEntries = 64
	ringCQEntries = 2 * ringMaxEntries

	// wakeTag marks the completion that wakes a queue's reaper.
	wakeTag = ^uint64(0)
)

// uringCmdReq is struct fuse_uring_cmd_req, in the SQE's command area.
type uringCmdReq struct {
	flags    uint64
	commitID uint64
	qid      uint16
	pad      [6]uint8
}

// entInOut is struct fuse_uring_ent_in_out.
type entInOut struct {
	flags     uint64
	commitID  uint64
	payloadSz uint32
	pad       uint32
	reserved  uint64
}

// rings is the set of queues for one connection, made before the mount so
// that INIT can offer FUSE over io_uring only when they exist.
type rings struct {
	queues     []*ringQueue
	mountpoint string
}

// ringQueue is the kernel's queue for one CPU: requests made on that CPU
// arrive on its entries. One thread at a time, pinned to the CPU, is its
// reaper: it waits for completions and serves requests inline, as the
// /dev/fuse reader does, and submits every commit, so that each entry's
// next request is delivered to a reaper thread (the kernel copies a
// request in, as task work, on the thread that submitted the entry).
// Threads that were reapers park and are never ended while the queue
// lives: a thread's exit cancels the entries it submitted.
type ringQueue struct {
	loop *Loop
	qid  int
	ring *uring

	mountpoint  string // for kick
	payloadSize int

	sqMu sync.Mutex // serialises writing submission slots

	mu      sync.Mutex // guards entries and ready
	entries []*ringEntry
	ready   []*ringEntry // answered off the reaper; the reaper commits them

	live     atomic.Int32  // entries the kernel holds or that are being served
	held     atomic.Int32  // entries being served
	since    atomic.Int64  // the reaper token, as Loop.inlineSince
	wake     chan struct{} // hands the reaper role to a parked thread
	wakeFd   int           // eventfd: written to wake the reaper
	wakeBuf  []byte        // where the armed read of wakeFd lands, mapped
	stopped  chan struct{} // closed when the queue has ended
	stopOnce sync.Once
	away     sync.WaitGroup // goroutines serving requests that may wait
	threads  sync.WaitGroup // reaper threads other than the first
	logged   atomic.Bool    // an unexpected ring error was reported
}

// ringEntry is one registered request slot: a header buffer and a payload
// buffer, mapped outside the Go heap since the kernel writes them at any
// time.
type ringEntry struct {
	q         *ringQueue
	index     int
	mem       []byte
	header    []byte
	payload   []byte
	iov       [2]unix.Iovec
	delivered bool // has carried a request: registered for sure
	unique    uint64
	req       request
}

// possibleCPUs is the kernel's num_possible_cpus(): one queue each.
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", b, err)
		}
		z := a
		if isRange {
			if z, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("cpu list %q: %w", b, err)
			}
		}
		n += z - a + 1
	}
	return n, nil
}

// UringEnabled tells whether the kernel offers FUSE over io_uring (the
// fuse module's enable_uring parameter).
func UringEnabled() bool {
	b, err := os.ReadFile("/sys/module/fuse/parameters/enable_uring")
	return err == nil && strings.TrimSpace(string(b)) == "Y"
}

// newRings makes one io_uring and its first entries per possible CPU.
// payloadSize must be at least the kernel's largest request or reply
// payload (max_write, max_pages).
func newRings(payloadSize int) (*rings, error) {
	n, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	rs := &rings{}
	for qid := 0; qid < n; qid++ {
		u, err := newUring(ringSQEntries, ringCQEntries)
		if err != nil {
			rs.close()
			return nil, err
		}
		q := &ringQueue{qid: qid, ring: u, payloadSize: payloadSize, wakeFd: -1, wake: make(chan struct{}), stopped: make(chan struct{})}
		rs.queues = append(rs.queues, q)
		if q.wakeFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			rs.close()
			return nil, fmt.Errorf("eventfd: %w", err)
		}
		if q.wakeBuf, err = unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
			rs.close()
			return nil, fmt.Errorf("map a wake-up buffer: %w", err)
		}
		q.wakeBuf = q.wakeBuf[:8]
		for i := 0; i < ringInitialEntries; i++ {
			if _, err := q.newEntry(); err != nil {
				rs.close()
				return nil, err
			}
		}
	}
	return rs, nil
}

// close releases rings that never served; a nil rs is none.
func (rs *rings) close() {
	if rs == nil {
		return
	}
	for _, q := range rs.queues {
		q.release()
	}
}

// release closes the queue's ring, which cancels the armed wake-up read,
// then unmaps the buffers.
func (q *ringQueue) release() {
	q.ring.close()
	for _, e := range q.entries {
		unix.Munmap(e.mem)
	}
	q.entries = nil
	if q.wakeBuf != nil {
		unix.Munmap(q.wakeBuf[:cap(q.wakeBuf)])
	}
	if q.wakeFd >= 0 {
		unix.Close(q.wakeFd)
	}
}

func (q *ringQueue) newEntry() (*ringEntry, error) {
	mem, err := unix.Mmap(-1, 0, ringHeaderMapSize+q.payloadSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map a ring entry: %w", err)
	}
	e := &ringEntry{q: q, mem: mem, header: mem[:ringHeaderSize], payload: mem[ringHeaderMapSize:]}
	e.iov[0] = unix.Iovec{Base: &e.header[0]}
	e.iov[0].SetLen(len(e.header))
	e.iov[1] = unix.Iovec{Base: &e.payload[0]}
	e.iov[1].SetLen(len(e.payload))
	q.mu.Lock()
	e.index = len(q.entries)
	q.entries = append(q.entries, e)
	q.mu.Unlock()
	return e, nil
}

// start makes each queue's first reaper, which registers the entries.
func (rs *rings) start(l *Loop) {
	for _, q := range rs.queues {
		q.loop, q.mountpoint = l, rs.mountpoint
		for _, e := range q.entries {
			e.req.loop = l
			e.req.ent = e
		}
		l.goroutines.Add(1)
		go q.thread(true)
	}
}

// thread runs one reaper thread of the queue. The first one registers
// the entries and, once the queue has ended, waits for the others and
// releases the queue.
func (q *ringQueue) thread(first bool) {
	// Never unlocked: the thread must outlive the entries it submitted
	// (see ringQueue), and the kernel delivers this CPU's requests to it.
	runtime.LockOSThread()
	pinToCPU(q.qid) // fails only for CPUs not online or not allowed: serve unpinned
	// Left before the goroutine ends, and so before the thread does.
	defer q.loop.reapers.join()()
	if !first {
		defer q.threads.Done()
		q.run()
		return
	}
	defer q.loop.goroutines.Done()
	q.armWake()
	q.register(q.entries)
	q.run()
	q.threads.Wait()
	q.away.Wait()
	q.release()
}

// pinToCPU keeps the calling thread on cpu.
func pinToCPU(cpu int) error {
	var cpus unix.CPUSet
	cpus.Set(cpu)
	return unix.SchedSetaffinity(0, &cpus)
}

// run reaps while this thread is the reaper and parks while another is,
// until the queue has ended.
func (q *ringQueue) run() {
	for {
		if q.reap() {
			q.stopOnce.Do(func() { close(q.stopped) })
			return
		}
		select {
		case <-q.stopped:
			return
		case <-q.wake:
		}
	}
}

// handOff makes another thread the reaper: a parked one, or a new one.
func (q *ringQueue) handOff() {
	select {
	case q.wake <- struct{}{}:
	default:
		q.threads.Add(1)
		go q.thread(false)
	}
}

// register submits entries to the kernel.
func (q *ringQueue) register(entries []*ringEntry) {
	for _, e := range entries {
		q.live.Add(1)
		q.submit(func(s *sqe) {
			s.opcode = uringOpCmd
			s.fd = int32(q.loop.fd)
			s.off = uringCmdRegister
			s.addr = uint64(uintptr(unsafe.Pointer(&e.iov[0])))
			s.len = uint32(len(e.iov))
			s.userData = uint64(e.index)
			(*uringCmdReq)(unsafe.Pointer(&s.cmd[0])).qid = uint16(q.qid)
		})
	}
	// The kernel reads the iovecs while submitting.
	q.flush(false)
}

// submit fills and publishes one submission slot, making room first if
// the ring is full.
func (q *ringQueue) submit(fill func(*sqe)) {
	q.sqMu.Lock()
	defer q.sqMu.Unlock()
	s := q.ring.nextSQE()
	for s == nil {
		q.flush(false)
		s = q.ring.nextSQE()
	}
	fill(s)
	q.ring.push()
}

// flush hands published slots to the kernel and, with wait, waits for a
// completion.
func (q *ringQueue) flush(wait bool) {
	if err := q.ring.enter(q.ring.unsubmitted(), wait); err != nil {
		q.logOnce(err)
		if !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EAGAIN) {
			time.Sleep(time.Millisecond) // do not spin on a broken ring
		}
	}
}

// logOnce reports the first unexpected ring error of the queue; the
// errors that follow are usually the same one again.
func (q *ringQueue) logOnce(err error) {
	if !q.logged.Swap(true) {
		q.loop.opts.Logger.Printf("fuseloop: ring %d: %v", q.qid, err)
	}
}

// commit answers e's request and fetches the next one into it.
func (q *ringQueue) commit(e *ringEntry) {
	q.held.Add(-1)
	q.submit(func(s *sqe) {
		s.opcode = uringOpCmd
		s.fd = int32(q.loop.fd)
		s.off = uringCmdCommitAndFetch
		s.userData = uint64(e.index)
		c := (*uringCmdReq)(unsafe.Pointer(&s.cmd[0]))
		c.commitID = e.unique
		c.qid = uint16(q.qid)
	})
}

// reap serves the queue until another thread is made the reaper (false)
// or the queue has ended (true).
func (q *ringQueue) reap() bool {
	for {
		q.commitReady()
		c, ok := q.ring.peek()
		if !ok {
			q.flush(true)
			continue
		}
		q.ring.pop()
		if c.userData == wakeTag {
			if c.res < 0 && c.res != -int32(unix.EINTR) {
				q.logOnce(fmt.Errorf("wake-up read: %w", unix.Errno(-c.res)))
				time.Sleep(time.Millisecond) // do not spin on a failing read
			}
			q.armWake() // the ready entries are committed at the top
			continue
		}
		q.mu.Lock()
		e := q.entries[c.userData]
		q.mu.Unlock()
		if c.res < 0 {
			if q.entryEnded(e, c.res) {
				return true
			}
			continue
		}
		// Earlier answers go out before this request is served.
		if q.ring.unsubmitted() > 0 {
			q.flush(false)
		}
		if !q.serveInline(e) {
			return false
		}
	}
}

// serveInline serves e's request on the reaper, or on a new goroutine
// when it may wait. It returns false when the stall guard made another
// thread the reaper meanwhile.
func (q *ringQueue) serveInline(e *ringEntry) bool {
	e.delivered = true
	q.held.Add(1)
	if q.live.Load()-q.held.Load() < ringSpareEntries {
		q.grow()
	}
	l := q.loop
	l.requestStarted()
	l.ringServed.Add(1)
	o := e.decode()
	if o.status == fuse.OK && mayBlock(&e.req) {
		q.away.Add(1)
		go func() {
			defer q.away.Done()
			e.serve(o)
			q.answerAway(e)
		}()
		if q.held.Load() >= ringInitialEntries/2 {
			q.kick()
		}
		return true
	}
	start := l.now()
	q.since.Store(start)
	e.serve(o)
	if !q.since.CompareAndSwap(start, 0) {
		q.answerAway(e) // the guard made another thread the reaper
		return false
	}
	q.commit(e)
	return true
}

// grow registers more entries while requests that wait hold the others.
func (q *ringQueue) grow() {
	q.mu.Lock()
	n := len(q.entries)
	q.mu.Unlock()
	var added []*ringEntry
	for i := 0; i < ringSpareEntries && n+i < ringMaxEntries; i++ {
		e, err := q.newEntry()
		if err != nil {
			q.loop.opts.Logger.Printf("fuseloop: ring %d: %v", q.qid, err)
			break
		}
		e.req.loop, e.req.ent = q.loop, e
		added = append(added, e)
	}
	q.register(added)
}

// kick makes a request on the queue's CPU (a statfs of the mount), which
// the kernel delivers to a free entry or queues. The kernel gives queued
// requests only to entries that commit, never to newly registered ones:
// once every entry held is a request that waits, the requests queued
// behind them would wait for good. Each kick's commit hands one queued
// request on; kicking for every request that goes away to wait keeps the
// queue moving however many wait.
func (q *ringQueue) kick() {
	if q.mountpoint == "" {
		return
	}
	go func() {
		// Never unlocked: the pinned thread ends with the goroutine.
		runtime.LockOSThread()
		if pinToCPU(q.qid) != nil {
			return // no request can come from that CPU
		}
		var st unix.Statfs_t
		unix.Statfs(q.mountpoint, &st)
	}()
}

// answerAway queues e for the reaper to commit and wakes it. It does
// not submit anything itself: only reaper threads may (see ringQueue).
func (q *ringQueue) answerAway(e *ringEntry) {
	q.mu.Lock()
	q.ready = append(q.ready, e)
	q.mu.Unlock()
	one := [8]byte{1}
	unix.Write(q.wakeFd, one[:])
}

// armWake has the reaper woken when wakeFd is written: a read of the
// eventfd, whose completion carries wakeTag.
func (q *ringQueue) armWake() {
	q.submit(func(s *sqe) {
		s.opcode = uringOpRead
		s.fd = int32(q.wakeFd)
		s.addr = uint64(uintptr(unsafe.Pointer(&q.wakeBuf[0])))
		s.len = uint32(len(q.wakeBuf))
		s.off = ^uint64(0) // the current position: eventfds have none
		s.userData = wakeTag
	})
}

// commitReady commits the entries answered off the reaper.
func (q *ringQueue) commitReady() {
	q.mu.Lock()
	ready := q.ready
	q.ready = nil
	q.mu.Unlock()
	for _, e := range ready {
		q.commit(e)
	}
}

// entryEnded handles a failed registration or commit: the connection is
// going away (ENOTCONN, ECONNABORTED, ECANCELED) or the kernel refused the
// entry. It returns true when the queue has no entries left.
func (q *ringQueue) entryEnded(e *ringEntry, res int32) bool {
	err := unix.Errno(-res)
	ending := err == unix.ENOTCONN || err == unix.ECONNABORTED || err == unix.ECANCELED
	switch {
	case !e.delivered && !ending:
		q.logOnce(fmt.Errorf("registering with the kernel: %w; serving through /dev/fuse", err))
	case e.delivered && !ending:
		// The kernel lost track of the request (it ended meanwhile):
		// the entry is no longer registered, so register it again.
		q.loop.opts.Logger.Printf("fuseloop: ring %d: commit: %v", q.qid, err)
		e.delivered = false
		q.live.Add(-1)
		q.register([]*ringEntry{e})
		return false
	}
	return q.live.Add(-1) == 0
}

// decode reads e's request into e.req.
func (e *ringEntry) decode() decoded {
	r := &e.req
	hdr := (*fuse.InHeader)(unsafe.Pointer(&e.header[0]))
	e.unique = hdr.Unique
	o := opFor(hdr.Opcode)
	io := (*entInOut)(unsafe.Pointer(&e.header[ringEntInOutOff]))
	payload := int(io.payloadSz)
	fixed := int(hdr.Length) - headerSize - payload
	ext := int(hdr.TotalExtlen) * 8
	if payload > len(e.payload) || fixed < 0 || fixed > ringEntInOutOff-ringOpInOffset || ext > payload {
		r.decodeParts(e.header[:headerSize], nil, nil, &unknownOp)
		return decoded{o, fuse.EINVAL}
	}
	st := r.decodeParts(e.header[:headerSize], e.header[ringOpInOffset:ringOpInOffset+fixed], e.payload[:payload-ext], o)
	return decoded{o, st}
}

// serve serves the decoded request and writes the answer into e.
func (e *ringEntry) serve(d decoded) {
	r := &e.req
	l := e.q.loop
	status := d.status
	if l.opts.Debug {
		l.opts.Logger.Printf("rx %d: %s n%d %q (ring %d)", e.unique, d.op.name, r.hdr.NodeId, r.names[:d.op.names], e.q.qid)
	}
	if status == fuse.OK {
		status = l.serve(r, d.op)
	}
	if d.op.noReply {
		// Only FORGETs go without an answer, and they never come
		// through the ring; the entry must still be committed.
		status = fuse.ENOSYS
	}
	e.answer(status)
	if l.opts.Debug {
		l.opts.Logger.Printf("tx %d: %v, %d+%d bytes (ring %d)", e.unique, status, len(r.out), len(r.data), e.q.qid)
	}
	r.finish()
}

// answer writes the reply into e's buffers: the out header, then the
// fixed out struct and the data as the payload.
func (e *ringEntry) answer(status fuse.Status) {
	r := &e.req
	out, data := r.out, r.data
	if status != fuse.OK || len(out)+len(data) > len(e.payload) {
		if status == fuse.OK {
			status = fuse.EIO
		}
		out, data = nil, nil
	}
	n := copy(e.payload, out)
	if len(data) > 0 && !(n == 0 && &data[0] == &e.payload[0]) {
		copy(e.payload[n:], data)
	}
	size := len(out) + len(data)
	hdr := (*fuse.OutHeader)(unsafe.Pointer(&e.header[0]))
	*hdr = fuse.OutHeader{Length: uint32(int(unsafe.Sizeof(*hdr)) + size), Status: -int32(status), Unique: e.unique}
	io := (*entInOut)(unsafe.Pointer(&e.header[ringEntInOutOff]))
	io.payloadSz = uint32(size)
}
