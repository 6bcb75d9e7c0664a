package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The runner and the init talk over two descriptors the init inherits:
//
//	fd 3  a pipe; the runner writes one initConfig as JSON and closes it.
//	fd 4  a SOCK_SEQPACKET socket; the init answers with exactly one
//	      initReply, carrying the pty master as SCM_RIGHTS when Tty is set.
//
// The reply comes after every mount is in place and before the command is
// started, so a setup failure is an error from Start, not an exit code.
const (
	configFd = 3
	replyFd  = 4
)

// initConfig is everything the init needs, resolved on the host side so that
// the init does no lookups of its own before pivot_root.
type initConfig struct {
	Rootfs      string
	Args        []string
	Env         []string
	WorkingDir  string
	UID, GID    uint32
	Groups      []uint32
	Hostname    string
	EtcFiles    []bindMount
	Volumes     []bindMount
	NetworkNone bool
	ReadOnly    bool
	Tty         bool
	TtySize     *WinSize
}

// bindMount is a host path to bind into the container.
type bindMount struct {
	Source   string
	Target   string
	ReadOnly bool
	// Optional marks a mount that is skipped when its target is absent
	// and cannot be created (read-only view, dangling symlink, no parent
	// directory) instead of failing the run.
	Optional bool
}

// initReply is the init's one answer: empty Error means ready.
type initReply struct {
	Error string `json:",omitempty"`
}

// sendReply sends the reply, with fd attached when fd >= 0.
func sendReply(sock int, reply initReply, fd int) error {
	data, err := json.Marshal(reply)
	if err != nil {
		return fmt.Errorf("encoding the init's reply: %w", err)
	}
	var rights []byte
	if fd >= 0 {
		rights = unix.UnixRights(fd)
	}
	if err := unix.Sendmsg(sock, data, rights, nil, 0); err != nil {
		return fmt.Errorf("sending the init's reply: %w", err)
	}
	return nil
}

// errInitGone means the init exited (or crashed) before it replied.
var errInitGone = errors.New("the container's init exited before its setup finished")

// receiveReply reads the init's reply and the descriptor that came with it
// (nil when none did).
func receiveReply(sock *os.File) (initReply, *os.File, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	var n, oobn int
	var err error
	for {
		n, oobn, _, _, err = unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return initReply{}, nil, fmt.Errorf("reading the init's reply: %w", err)
	}
	if n == 0 {
		return initReply{}, nil, errInitGone
	}
	fd, err := receivedFd(oob[:oobn])
	if err != nil {
		return initReply{}, nil, err
	}
	var reply initReply
	if err := json.Unmarshal(buf[:n], &reply); err != nil {
		if fd != nil {
			fd.Close()
		}
		return initReply{}, nil, fmt.Errorf("decoding the init's reply: %w", err)
	}
	return reply, fd, nil
}

func receivedFd(oob []byte) (*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("reading the init's reply: %w", err)
	}
	for _, msg := range msgs {
		fds, err := unix.ParseUnixRights(&msg)
		if err != nil {
			return nil, fmt.Errorf("reading the init's reply: %w", err)
		}
		if len(fds) == 1 {
			return os.NewFile(uintptr(fds[0]), "pty master"), nil
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	return nil, errors.New("the init's reply carried an unexpected number of descriptors")
}
