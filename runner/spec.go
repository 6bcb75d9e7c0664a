package runner

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Network says which network namespace the container gets.
type Network string

const (
	// NetworkHost shares the host's network namespace (the default).
	NetworkHost Network = "host"
	// NetworkNone gives the container a new, empty network namespace whose
	// only interface is the loopback, brought up.
	NetworkNone Network = "none"
)

// ParseNetwork turns the --network flag's value into a Network.
func ParseNetwork(s string) (Network, error) {
	switch Network(s) {
	case "", NetworkHost:
		return NetworkHost, nil
	case NetworkNone:
		return NetworkNone, nil
	}
	return "", fmt.Errorf("unknown network mode %q (want host or none)", s)
}

// Volume is a host path bind-mounted into the container.
type Volume struct {
	// Source is the host path; it must exist.
	Source string
	// Target is the absolute path inside the container. A missing target is
	// created in the view (an empty directory or file, matching Source).
	Target string
	// ReadOnly makes the whole bind, submounts included, read-only.
	ReadOnly bool
}

// ParseVolume parses the -v flag's value "HOSTPATH:PATH[:ro|:rw]".
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	var v Volume
	switch len(parts) {
	case 2:
	case 3:
		switch parts[2] {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return Volume{}, fmt.Errorf("volume %q: unknown option %q (want ro or rw)", s, parts[2])
		}
	default:
		return Volume{}, fmt.Errorf("volume %q: want HOSTPATH:PATH[:ro]", s)
	}
	v.Source, v.Target = parts[0], parts[1]
	if v.Source == "" || v.Target == "" {
		return Volume{}, fmt.Errorf("volume %q: want HOSTPATH:PATH[:ro]", s)
	}
	return v, nil
}

// WinSize is a terminal's size in character cells.
type WinSize struct {
	Rows, Cols uint16
}

// Spec says what to run and how. Only Rootfs, StateDir and Args are required.
type Spec struct {
	// Rootfs is the host path of the already-mounted root filesystem (the
	// union view). It becomes the container's "/".
	Rootfs string
	// StateDir is a host directory owned by this container; the generated
	// hosts, hostname and resolv.conf files are written there.
	StateDir string

	// Args is the command and its arguments. Args[0] without a slash is
	// looked up in the container's PATH (from Env).
	Args []string
	// Env is the command's environment, KEY=VALUE. PATH, HOME and HOSTNAME
	// (and TERM with Tty) get defaults when missing.
	Env []string
	// WorkingDir is the command's directory inside the container, "/" when
	// empty. A missing directory is created.
	WorkingDir string
	// User is "", "NAME", "UID", "NAME:GROUP", "UID:GID" (any mix), resolved
	// in the view's /etc/passwd and /etc/group. Empty means root.
	User string
	// Hostname is set in the container's UTS namespace and written to its
	// /etc/hostname and /etc/hosts. Empty keeps the host's name.
	Hostname string
	// Volumes are bind-mounted after the root is in place.
	Volumes []Volume
	// Network is NetworkHost when empty.
	Network Network
	// ReadOnly makes the root mount read-only (the kernel filesystems,
	// generated files and rw volumes stay writable).
	ReadOnly bool

	// Tty gives the command a pseudo-terminal from the container's own
	// /dev/pts as its stdin, stdout and stderr. The runner copies Stdin to
	// it and its output to Stdout; Stderr then only gets the runner's own
	// messages.
	Tty bool
	// TtySize is the terminal's initial size with Tty; nil leaves 0x0
	// (Run fills it from the host terminal).
	TtySize *WinSize

	// Stdin, Stdout and Stderr are the command's standard streams. A nil
	// Stdin reads /dev/null; nil Stdout or Stderr discard. An *os.File is
	// handed to the command as it is; other readers and writers are copied
	// through a pipe.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// Started, when set, is called by Run once the container is running
	// and before Run waits for it; "strata run" records the init's pid
	// there. Start does not call it.
	Started func(*Process)
}

// validate checks what can be checked on the host, before any namespace
// exists, so that a bad call gets a clear error instead of a dead init.
func (s *Spec) validate() error {
	if len(s.Args) == 0 || s.Args[0] == "" {
		return errors.New("no command given")
	}
	if err := checkDirectory("root filesystem", s.Rootfs); err != nil {
		return err
	}
	if err := checkDirectory("state directory", s.StateDir); err != nil {
		return err
	}
	if s.WorkingDir != "" && !path.IsAbs(s.WorkingDir) {
		return fmt.Errorf("working directory %q is not absolute", s.WorkingDir)
	}
	if _, err := ParseNetwork(string(s.Network)); err != nil {
		return err
	}
	for _, v := range s.Volumes {
		if err := validateVolume(v); err != nil {
			return err
		}
	}
	return nil
}

func checkDirectory(what, dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return fmt.Errorf("%s %q must be an absolute path", what, dir)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("%s %q is not a directory", what, dir)
	}
	return nil
}

func validateVolume(v Volume) error {
	if !filepath.IsAbs(v.Source) {
		return fmt.Errorf("volume source %q must be an absolute path", v.Source)
	}
	if _, err := os.Stat(v.Source); err != nil {
		return fmt.Errorf("volume source: %w", err)
	}
	if !path.IsAbs(v.Target) || path.Clean(v.Target) == "/" {
		return fmt.Errorf("volume target %q must be an absolute path below /", v.Target)
	}
	return nil
}

// commandEnv returns the command's environment: the spec's, plus the
// defaults a shell expects when the image did not set them.
func commandEnv(s *Spec, user credential, hostname string) []string {
	env := append([]string(nil), s.Env...)
	has := func(key string) bool {
		for _, kv := range env {
			if strings.HasPrefix(kv, key+"=") {
				return true
			}
		}
		return false
	}
	if !has("PATH") {
		env = append(env, "PATH="+defaultPath)
	}
	if !has("HOME") {
		env = append(env, "HOME="+user.Home)
	}
	if !has("HOSTNAME") && hostname != "" {
		env = append(env, "HOSTNAME="+hostname)
	}
	if s.Tty && !has("TERM") {
		env = append(env, "TERM=xterm")
	}
	return env
}

// defaultPath is the PATH a command gets when its environment has none; the
// same list the container tools use.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
