// Package filelock serializes work on shared files across goroutines and
// processes with flock(2): each caller opens the lock file anew, so two
// goroutines of one process exclude each other as two processes do.
package filelock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Locked runs fn holding an exclusive lock on the file at path (created
// if missing, with mode perm).
func Locked(path string, perm os.FileMode, fn func() error) error {
	unlock, err := Hold(path, perm, nil)
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}

// Hold takes an exclusive lock on the file at path (created if missing,
// with mode perm) and keeps it until unlock. When another holder has it,
// waiting (if not nil) is called once before blocking, so that a long
// wait can be said rather than look hung.
func Hold(path string, perm os.FileMode, waiting func()) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, perm)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		if waiting != nil {
			waiting()
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// Beside is the lock file of path: hidden beside it, so that what looks
// for such paths by pattern (a cache's rootfs-*, bin-*) never finds it.
func Beside(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".lock")
}
