package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

func init() {
	registerVerb(verb{
		name:    "demo",
		summary: "build a small two-layer union, mount it and show what it does",
		run:     runDemo,
	})
}

// runDemo shows strata's main job on a union it builds in a temporary
// directory: a file from a lower layer, a copy-up on write, and a whiteout
// on delete. It mounts with this same binary, as a user would.
func runDemo(args []string) error {
	dir, err := os.MkdirTemp("", "strata-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	base, app, upper, work, mnt := filepath.Join(dir, "base"), filepath.Join(dir, "app"),
		filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "mnt")
	for _, d := range []string{base + "/etc", app + "/etc", upper, work, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		base + "/etc/os-release": "NAME=demo-base\n",
		base + "/etc/motd":       "hello from the base layer\n",
		base + "/etc/old.conf":   "to be deleted\n",
		app + "/etc/app.conf":    "port=8080\n",
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			return err
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	step := func(format string, a ...any) { fmt.Printf("\n== "+format+"\n", a...) }
	step("strata mount --lower app --lower base --upper upper --work work mnt")
	cmd := exec.Command(exe, "mount", "--lower", app, "--lower", base, "--upper", upper, "--work", work, mnt)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	mounted := true
	defer func() {
		if mounted {
			unmount(mnt, true)
		}
	}()
	show := func(path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("%s: %v\n", strings.TrimPrefix(path, dir+"/"), err)
			return
		}
		fmt.Printf("%s: %s", strings.TrimPrefix(path, dir+"/"), b)
	}
	list := func(path string) {
		ents, err := os.ReadDir(path)
		if err != nil {
			fmt.Printf("%s: %v\n", path, err)
			return
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		fmt.Printf("ls %s: %s\n", strings.TrimPrefix(path, dir+"/"), strings.Join(names, " "))
	}
	step("the view merges both layers")
	list(mnt + "/etc")
	show(mnt + "/etc/motd")

	step("writing a lower file copies it up; the lower layer does not change")
	if err := os.WriteFile(mnt+"/etc/motd", []byte("changed in the container\n"), 0o644); err != nil {
		return err
	}
	show(mnt + "/etc/motd")
	show(upper + "/etc/motd")
	show(base + "/etc/motd")

	step("deleting a lower file leaves a whiteout in the upper layer")
	if err := os.Remove(mnt + "/etc/old.conf"); err != nil {
		return err
	}
	list(mnt + "/etc")
	var st unix.Stat_t
	if err := unix.Lstat(upper+"/etc/old.conf", &st); err == nil && whiteout.IsCharWhiteout(&st) {
		fmt.Println("upper/etc/old.conf: character device 0/0 (an overlay whiteout)")
	} else {
		fmt.Printf("upper/etc/old.conf: not a whiteout (%v)\n", err)
	}
	show(base + "/etc/old.conf")

	step("strata umount mnt")
	if err := unmount(mnt, false); err != nil {
		return err
	}
	mounted = false
	// The daemon exits once the kernel lets go of the mount.
	for i := 0; i < 50 && isMountpoint(mnt); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("unmounted; the upper layer keeps the changes:")
	list(upper + "/etc")
	return nil
}

// isMountpoint reports whether path is listed as a mountpoint.
func isMountpoint(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
