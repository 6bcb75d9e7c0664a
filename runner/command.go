package runner

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exit codes for a command that never ran, as POSIX shells use them.
const (
	exitNotFound      = 127
	exitNotExecutable = 126
)

// startCommand starts the command as the init's child, as the configured
// user, in the working directory, with the given stdio. With Tty it gets a
// session of its own with the terminal as controlling terminal, so Ctrl-C
// and job control work. If the command cannot be executed, startCommand
// writes the reason to the command's stderr and returns pid -1 with 127
// (not found) or 126 (found but not executable).
func startCommand(cfg *initConfig, stdio []*os.File) (pid int, code int) {
	stderr := stdio[2]
	program, err := findCommand(cfg.Args[0], pathOf(cfg.Env))
	if err != nil {
		fmt.Fprintf(stderr, "strata: %v\n", err)
		return -1, exitNotFound
	}
	attr := &syscall.ProcAttr{
		Dir:   cfg.WorkingDir,
		Env:   cfg.Env,
		Files: []uintptr{stdio[0].Fd(), stdio[1].Fd(), stdio[2].Fd()},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: cfg.UID, Gid: cfg.GID, Groups: cfg.Groups},
			Setsid:     cfg.Tty,
			Setctty:    cfg.Tty,
			Ctty:       0,
		},
	}
	pid, err = syscall.ForkExec(program, cfg.Args, attr)
	if err != nil {
		fmt.Fprintf(stderr, "strata: exec %s: %v\n", cfg.Args[0], describeExecError(err))
		return -1, execFailureCode(err)
	}
	return pid, 0
}

// execFailureCode: ENOENT from execve means the file, its #! interpreter or
// its dynamic loader is missing; shells say 127 for that. Anything else
// (EACCES, ENOEXEC, EISDIR, ...) means it is there but cannot run: 126.
func execFailureCode(err error) int {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return exitNotFound
	}
	return exitNotExecutable
}

func describeExecError(err error) string {
	if errors.Is(err, unix.ENOENT) {
		return "no such file, interpreter or loader in the image"
	}
	return err.Error()
}

// errCommandNotFound is returned by findCommand when no PATH entry has the
// name.
var errCommandNotFound = errors.New("command not found in the image")

// findCommand resolves a command name the way execvp does, inside the
// container: a name with a slash is used as it is; otherwise the first
// PATH entry holding an executable regular file wins, and failing that the
// first holding any file of that name (so that exec reports EACCES: 126).
func findCommand(name, pathList string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	var notExecutable string
	for _, dir := range strings.Split(pathList, ":") {
		if dir == "" {
			dir = "."
		}
		candidate := path.Join(dir, name)
		info, err := os.Stat(candidate)
		if err != nil || info.IsDir() {
			continue
		}
		if info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 {
			return candidate, nil
		}
		if notExecutable == "" {
			notExecutable = candidate
		}
	}
	if notExecutable != "" {
		return notExecutable, nil
	}
	return "", fmt.Errorf("%q: %w", name, errCommandNotFound)
}

// pathOf returns the value of PATH in env.
func pathOf(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if value, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return value
		}
	}
	return defaultPath
}
