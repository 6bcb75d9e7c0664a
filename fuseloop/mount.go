package fuseloop

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mounted is a FUSE mount served by a Loop.
type Mounted struct {
	// Server is go-fuse's server for the connection: it negotiated INIT
	// and sends notifications; it never reads requests.
	*fuse.Server
	mountpoint string
	loop       *Loop
	finished   chan struct{} // closed when the connection is over and cleaned up
}

// Mount mounts fs at mountpoint with mount(2), which needs root, and serves
// it with a Loop. It returns once the kernel's INIT is answered. With
// opts.Uring, requests come through FUSE over io_uring when the kernel
// offers it (see UringEnabled), and through /dev/fuse otherwise.
func Mount(fs fuse.RawFileSystem, mountpoint string, mo fuse.MountOptions, opts Options) (*Mounted, error) {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	opts.MaxWrite, opts.Debug = mo.MaxWrite, mo.Debug
	if opts.Logger == nil {
		opts.Logger = mo.Logger
	}
	if opts.Logger == nil {
		opts.Logger = log.New(os.Stderr, "", log.LstdFlags)
	}
	// The rings exist before INIT offers them: once INIT has, the kernel
	// holds every request until the rings are registered.
	var rs *rings
	if opts.Uring && UringEnabled() {
		if rs, err = newRings(ringPayloadSize(mo.MaxWrite)); err != nil {
			opts.Logger.Printf("fuseloop: FUSE over io_uring unavailable, serving through /dev/fuse: %v", err)
		} else {
			mo.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
		}
	}
	fd, err := mountDevice(mp, &mo)
	if err != nil {
		rs.close()
		return nil, err
	}
	// On the magic /dev/fd/N mount point go-fuse takes the descriptor as
	// mounted and only negotiates INIT on it.
	mo.DirectMount = false
	srv, err := fuse.NewServer(fs, fmt.Sprintf("/dev/fd/%d", fd), &mo)
	if err != nil {
		unix.Unmount(mp, unix.MNT_DETACH)
		unix.Close(fd)
		rs.close()
		return nil, err
	}
	if rs != nil && srv.KernelSettings().Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		rs.close() // the kernel did not offer it
		rs = nil
	}
	if opts.Negotiated != nil {
		opts.Negotiated(srv)
	}
	m := &Mounted{Server: srv, mountpoint: mp, finished: make(chan struct{})}
	if rs != nil {
		rs.mountpoint = mp
	}
	m.loop = serve(fd, fs, opts, rs)
	go func() {
		m.loop.Wait()
		// The connection is gone: go-fuse's loop reads ENODEV at once and
		// closes the descriptor, after any notification in flight.
		srv.Serve()
		close(m.finished)
	}()
	return m, nil
}

// ringPayloadSize is the payload buffer each ring entry needs: the
// kernel's largest request or reply payload (fs/fuse/dev_uring.c:
// max(FUSE_MIN_READ_BUFFER, max_write, max_pages pages)); the kernel's
// default of 32 pages is the floor in case it ignores ours.
func ringPayloadSize(maxWrite int) int {
	page := os.Getpagesize()
	return max(8192, (maxWrite+page-1)/page*page, 32*page)
}

// Uring tells whether requests come through FUSE over io_uring.
func (m *Mounted) Uring() bool { return m.loop.rings != nil }

// RingRequests counts the requests served through io_uring so far.
func (m *Mounted) RingRequests() uint64 { return m.loop.ringServed.Load() }

// Unmount unmounts and waits until every request is answered. A mount
// that is already gone is not an error.
func (m *Mounted) Unmount() error {
	select {
	case <-m.finished:
		return nil
	default:
	}
	var err error
	delay := time.Duration(0)
	for try := 0; try < 5; try++ {
		// The kernel may not have seen the last close yet (EBUSY).
		if err = unix.Unmount(m.mountpoint, 0); err == nil {
			break
		}
		delay = 2*delay + 5*time.Millisecond
		time.Sleep(delay)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", m.mountpoint, err)
	}
	<-m.finished
	return nil
}

// Wait returns when the mount is gone and every request is answered.
func (m *Mounted) Wait() { <-m.finished }

// mountDevice opens /dev/fuse and mounts it at mountpoint, as fusermount3
// would, and returns the descriptor.
func mountDevice(mountpoint string, mo *fuse.MountOptions) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return -1, fmt.Errorf("mountpoint: %w", err)
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/fuse: %w", err)
	}
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&unix.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", mo.MaxWrite),
	}
	data = append(data, mo.Options...)
	if mo.AllowOther {
		data = append(data, "allow_other")
	}
	source := mo.FsName
	if source == "" {
		source = mo.Name
	}
	flags := mo.DirectMountFlags
	if flags == 0 {
		flags = unix.MS_NOSUID | unix.MS_NODEV
	}
	if err := unix.Mount(source, mountpoint, "fuse."+mo.Name, flags, strings.Join(data, ",")); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount: %w", err)
	}
	return fd, nil
}
