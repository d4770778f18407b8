package fsroot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// ErrUntrusted reports a file that a user other than root could have
// written or put in place.
var ErrUntrusted = errors.New("not a root-only file")

// ErrTooLarge reports a file longer than its reader allows.
var ErrTooLarge = errors.New("file too large")

// ReadTrusted reads the regular file at p, at most max bytes, only when no
// user but root could have written it or swapped it for another: the file
// and every directory from the root down to it are owned by root and not
// writable by group or others, and no component is a symlink. Root-side
// steps read their inputs this way, so that a file the proxy user can write
// never reaches a root process.
func (r *Root) ReadTrusted(p string, max int64) ([]byte, error) {
	comps, err := split(p)
	if err != nil {
		return nil, err
	}
	if len(comps) == 0 {
		return nil, fmt.Errorf("%q: %w: want a file path", p, ErrUnsafePath)
	}
	fd, err := r.openRoot()
	if err != nil {
		return nil, err
	}
	walked := "/"
	for i, c := range comps {
		if err := rootOnly(fd, walked); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		walked = path.Join(walked, c)
		flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
		if i < len(comps)-1 {
			flags |= unix.O_DIRECTORY
		}
		next, oerr := unix.Openat(fd, c, flags, 0)
		unix.Close(fd)
		switch {
		case errors.Is(oerr, unix.ENOENT):
			return nil, fmt.Errorf("read %s: %w", p, fs.ErrNotExist)
		case errors.Is(oerr, unix.ELOOP), errors.Is(oerr, unix.ENOTDIR):
			return nil, fmt.Errorf("read %s: %w: %s is a symbolic link or not a directory", p, ErrUntrusted, walked)
		case oerr != nil:
			return nil, fmt.Errorf("read %s: %w", p, oerr)
		}
		fd = next
	}
	f := os.NewFile(uintptr(fd), r.HostPath(p))
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if uint32(st.Mode)&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("read %s: %w: not a regular file", p, ErrUntrusted)
	}
	if st.Uid != 0 || uint32(st.Mode)&0o022 != 0 {
		return nil, fmt.Errorf("read %s: %w: owned by uid %d with mode %#o; it must be root's and writable by root alone", p, ErrUntrusted, st.Uid, uint32(st.Mode)&0o7777)
	}
	return readMax(f, p, max)
}

// rootOnly checks that the directory open at fd is root's alone to change.
func rootOnly(fd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Uid != 0 || uint32(st.Mode)&0o022 != 0 {
		return fmt.Errorf("%w: directory %s is owned by uid %d with mode %#o, so another user could replace what is in it", ErrUntrusted, name, st.Uid, uint32(st.Mode)&0o7777)
	}
	return nil
}

// ReadLimited reads the regular file at p as OpenSingle does (no final
// symlink, untrusted links refused on the way, never a FIFO or device, no
// file with other names), and refuses one longer than max bytes instead of
// reading it all.
func (r *Root) ReadLimited(p string, max int64) ([]byte, error) {
	f, err := r.OpenSingle(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readMax(f, p, max)
}

func readMax(f *os.File, p string, max int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("read %s: %w: over %d bytes", p, ErrTooLarge, max)
	}
	return data, nil
}
