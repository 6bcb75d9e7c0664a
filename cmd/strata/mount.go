package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/fs"
	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{
		name:    "mount",
		summary: "serve a union of layers at a mountpoint",
		run:     runMount,
	})
}

// mountOptions is what the mount verb's flags say.
type mountOptions struct {
	lowers     []string
	upper      string
	work       string
	opts       []string
	foreground bool
	debug      bool
	mountpoint string
	storeRef   string // a container or image in the store, instead of layers
	storeRoot  string
}

// daemonReadyEnv names the descriptor on which a background mount reports
// to the command that started it: "ok", or the error text.
const daemonReadyEnv = "STRATA_MOUNT_READY_FD"

func runMount(args []string) error {
	var o mountOptions
	f := newFlagSet("mount", "--lower DIR [--lower DIR...] [--upper DIR --work DIR] [-o OPTIONS] [--foreground] MOUNTPOINT\n       strata mount CONTAINER|IMAGE MOUNTPOINT")
	f.StringArrayVar(&o.lowers, "lower", nil, "a read-only layer; the first given is the topmost (repeatable)")
	f.StringVar(&o.upper, "upper", "", "the writable layer")
	f.StringVar(&o.work, "work", "", "scratch directory on the upper layer's filesystem")
	f.StringArrayVarP(&o.opts, "options", "o", nil, "mount options: lowerdir=A:B,upperdir=U,workdir=W,ro,allow_other,volatile,...")
	f.BoolVarP(&o.foreground, "foreground", "f", false, "stay attached and log here")
	f.BoolVar(&o.debug, "debug", false, "log every FUSE request (implies --foreground)")
	f.StringVar(&o.storeRoot, "root", layerdb.DefaultRoot(), "image store root, for CONTAINER|IMAGE (env STRATA_ROOT)")
	if err := f.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	switch f.NArg() {
	case 1:
		o.mountpoint = f.Arg(0)
	case 2:
		o.storeRef, o.mountpoint = f.Arg(0), f.Arg(1)
	default:
		f.Usage()
		return fmt.Errorf("%w: mount needs a MOUNTPOINT", errUsage)
	}
	spec, err := o.spec()
	if err != nil {
		return err
	}
	if err := preflight(o.mountpoint); err != nil {
		return err
	}
	if o.foreground || o.debug || os.Getenv(daemonReadyEnv) != "" {
		return serveMount(o.mountpoint, spec)
	}
	return startDaemon(args)
}

// spec merges flags and -o options into one description of the mount.
func (o *mountOptions) spec() (*fs.MountSpec, error) {
	spec := &fs.MountSpec{}
	for _, s := range o.opts {
		if err := fs.ParseMountOptions(s, spec); err != nil {
			return nil, err
		}
	}
	for _, u := range spec.Unknown {
		fmt.Fprintf(os.Stderr, "strata: mount: unknown option %q skipped\n", u)
	}
	if len(o.lowers) > 0 {
		spec.Lowers = o.lowers
	}
	if o.upper != "" {
		spec.Upper = o.upper
	}
	if o.work != "" {
		spec.Work = o.work
	}
	if o.storeRef != "" {
		if len(spec.Lowers) > 0 {
			return nil, fmt.Errorf("%w: give either layers or a container/image, not both", errUsage)
		}
		if err := specFromStore(o.storeRoot, o.storeRef, spec); err != nil {
			return nil, err
		}
	}
	if len(spec.Lowers) == 0 {
		return nil, fmt.Errorf("%w: no lower layer (use --lower or -o lowerdir=)", errUsage)
	}
	spec.Mount.Debug = spec.Mount.Debug || o.debug
	spec.DefaultAccess(os.Geteuid())
	return spec, nil
}

// specFromStore fills the layers of a container (read-write) or an image
// (read-only) from the store. The store is opened only for this lookup, so
// a long-running mount never holds its lock.
func specFromStore(root, ref string, spec *fs.MountSpec) error {
	var ms layerdb.MountSpec
	err := withStore(root, func(s *layerdb.Store) error {
		var err error
		ms, err = s.MountSpec(ref)
		return err
	})
	if err != nil {
		return err
	}
	spec.Lowers, spec.Upper, spec.Work = ms.Lowers, ms.Upper, ms.Work
	spec.ReadOnly = spec.ReadOnly || ms.ReadOnly
	return nil
}

// preflight checks what the kernel needs before anything is touched, and
// clears a mountpoint left dead by a killed daemon.
func preflight(mountpoint string) error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("/dev/fuse is missing (load the fuse module or pass the device into this container): %w", err)
	}
	// statfs always asks the daemon (stat may be answered from the
	// kernel's attribute cache), so it tells a dead FUSE mount reliably.
	var sfs unix.Statfs_t
	err := unix.Statfs(mountpoint, &sfs)
	if deadFUSE(err) {
		// "Transport endpoint is not connected": the daemon died.
		if uerr := unix.Unmount(mountpoint, unix.MNT_DETACH); uerr != nil {
			return fmt.Errorf("mountpoint %s is a dead FUSE mount and could not be cleared: %w", mountpoint, uerr)
		}
		fmt.Fprintf(os.Stderr, "strata: cleared the dead mount at %s\n", mountpoint)
	}
	st, err := os.Stat(mountpoint)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mountpoint)
	}
	return nil
}

// startDaemon runs this same command again in the background with a pipe on
// which the child says when the mount is live, and returns then.
func startDaemon(args []string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, append([]string{"mount"}, args...)...)
	cmd.Env = append(os.Environ(), daemonReadyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mount daemon: %w", err)
	}
	w.Close()
	msg, _ := io.ReadAll(bufio.NewReader(r))
	r.Close()
	text := strings.TrimSpace(string(msg))
	if text == "ok" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if text == "" {
		text = "the mount daemon exited before the mount was live"
	}
	return errors.New(text)
}

// serveMount mounts and serves until the filesystem is unmounted or a
// SIGTERM/SIGINT asks for it.
func serveMount(mountpoint string, spec *fs.MountSpec) error {
	ready := readyPipe()
	unix.Umask(0) // modes come from the kernel with the caller's umask applied
	raiseFileLimit()
	paceGarbageCollection()
	cfg := fs.Config{Lowers: spec.Lowers, Upper: spec.Upper, Work: spec.Work, Volatile: spec.Volatile, ReadOnly: spec.ReadOnly, ProbeDirSize: spec.ProbeDirSize}
	var srv *fs.Server
	var err error
	withFewReaders(func() { srv, err = fs.Mount(mountpoint, cfg, spec.Mount) })
	if err != nil {
		if ready != nil {
			fmt.Fprintf(ready, "%v\n", err)
			ready.Close()
		}
		return err
	}
	defer srv.Close()
	if path := os.Getenv("STRATA_CPUPROFILE"); path != "" {
		// For measuring where the daemon's time goes (bench/README.md).
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	go returnFreedMemory()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		s := <-sigs
		log.Printf("strata: %v: unmounting %s", s, mountpoint)
		done := make(chan error, 1)
		go func() { done <- srv.Unmount() }()
		select {
		case err := <-done:
			if err == nil {
				return
			}
			log.Printf("strata: unmount: %v; detaching", err)
		case <-time.After(5 * time.Second):
			log.Printf("strata: unmount is stuck; detaching")
		}
		// Busy or stuck: detach the mount so the mountpoint is free, and
		// leave; the kernel fails what is still in flight.
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		os.Exit(1)
	}()
	if ready != nil {
		fmt.Fprintln(ready, "ok")
		ready.Close()
	} else {
		abs, _ := filepath.Abs(mountpoint)
		log.Printf("strata: serving %s (%d lower layers)", abs, len(spec.Lowers))
	}
	srv.Wait()
	if path := os.Getenv("STRATA_HEAPPROFILE"); path != "" {
		// What the daemon holds at the end of a run (bench/README.md).
		runtime.GC()
		if f, err := os.Create(path); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	return nil
}

// withFewReaders runs mount so that go-fuse's loop, which serves
// unprivileged mounts, keeps two goroutines blocked reading /dev/fuse (it
// sizes its readers by GOMAXPROCS at server creation) and then gives the
// scheduler more Ps than readers. (Root mounts are read by fuseloop, one
// reader at a time, and only get the Ps.) A reader blocked in
// read(2) holds its P; with every P held that way the runtime's sysmon
// keeps taking them back every 20 µs, and on this kind of 2-CPU VM those
// wake-ups cost more than the requests (a warm ls -lR over 50,000 entries
// took 3.4 s with 8 readers on 8 Ps, 3.0 s with 2 readers on 8 Ps).
// GOMAXPROCS from the environment still wins.
func withFewReaders(mount func()) {
	if os.Getenv("GOMAXPROCS") != "" {
		mount()
		return
	}
	procs := max(runtime.GOMAXPROCS(0), 8)
	runtime.GOMAXPROCS(2)
	defer runtime.GOMAXPROCS(procs)
	mount()
}

// raiseFileLimit lifts the soft limit on open descriptors to the hard one:
// every open file in the view holds one, and directories cache theirs.
func raiseFileLimit() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
}

// returnFreedMemory hands memory the daemon no longer uses back to the
// system now and then. After a walk of a huge tree the kernel forgets its
// inodes and the nodes are garbage, but Go keeps the freed pages for reuse
// for a long time; a long-running mount should shrink back instead.
func returnFreedMemory() {
	for range time.Tick(30 * time.Second) {
		debug.FreeOSMemory()
	}
}

func readyPipe() *os.File {
	v := os.Getenv(daemonReadyEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(daemonReadyEnv)
	return os.NewFile(3, "ready")
}

// deadFUSE tells whether err from a FUSE mount says its daemon is gone:
// ENOTCONN once the kernel has torn the connection down; ECONNABORTED or
// ECANCELED for a request that raced the teardown of a daemon's io_uring
// queues.
func deadFUSE(err error) bool {
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ECANCELED)
}
