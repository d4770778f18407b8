package cli

import (
	"os"
	"testing"
)

// TestMain removes what up remembers in the working directory (the package's
// own, here): tests run up with --config and must leave the tree clean.
func TestMain(m *testing.M) {
	code := m.Run()
	os.Remove(".meshvm/" + siteFile)
	os.Remove(".meshvm")
	os.Exit(code)
}
