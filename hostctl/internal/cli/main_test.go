package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMain removes what up remembers in the working directory (the package's
// own, here): tests run up with --config and must leave the tree clean. make
// test runs this package in two processes at once (the fleet lab test beside
// the rest): each holds a shared lock while it runs, and only the last to
// finish, holding it alone, removes the file the other may still be writing.
func TestMain(m *testing.M) {
	lock := hold()
	code := m.Run()
	if lock == nil || unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		os.Remove(".meshvm/" + siteFile)
		os.Remove(".meshvm")
	}
	os.Exit(code)
}

// hold takes a shared lock named after the working directory (this
// checkout's package), or returns nil when it cannot.
func hold() *os.File {
	wd, _ := os.Getwd()
	sum := sha256.Sum256([]byte(wd))
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "meshvm-cli-test-"+hex.EncodeToString(sum[:6])+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_SH) != nil {
		f.Close()
		return nil
	}
	return f
}
