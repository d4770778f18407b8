package instance

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshvm/meshvm/pkg/host/filelock"
)

// lock holds the claim directory's lock across processes: two labs coming
// up at once must not take the same number.
func lock() (unlock func(), err error) {
	if err := os.MkdirAll(ClaimDir, 0o755); err != nil {
		return nil, fmt.Errorf("lab instances: %w (the lab runs as root)", err)
	}
	return filelock.Hold(filepath.Join(ClaimDir, ".lock"), 0o600, nil)
}
