// Package filelock serializes work on shared files across goroutines and
// processes with flock(2): each caller opens the lock file anew, so two
// goroutines of one process exclude each other as two processes do.
package filelock

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Locked runs fn holding an exclusive lock on the file at path (created
// if missing, with mode perm).
func Locked(path string, perm os.FileMode, fn func() error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, perm)
	if err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return fn()
}
