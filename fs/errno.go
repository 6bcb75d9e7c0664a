package fs

import (
	"errors"
	"syscall"
)

// toErrno is the one place where an error becomes the errno the kernel sees.
// Everything inside the package returns wrapped errors (fmt.Errorf with %w);
// the FUSE methods hand their error to toErrno on the way out. go-fuse's own
// fs.ToErrno is not used: it answers ENOSYS for anything that is not a bare
// errno.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	// An error without an errno inside is a bug or an unexpected library
	// failure; EIO tells the caller something went wrong below.
	return syscall.EIO
}
