package instance

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lock holds the claim directory's lock across processes: two labs coming
// up at once must not take the same number.
func lock() (unlock func(), err error) {
	if err := os.MkdirAll(ClaimDir, 0o755); err != nil {
		return nil, fmt.Errorf("lab instances: %w (the lab runs as root)", err)
	}
	return Lock(filepath.Join(ClaimDir, ".lock"))
}

// Lock holds an exclusive lock on the file path (made if missing) across
// processes until unlock.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
