package server

import (
	"testing"
	"time"
)

// The trim runs once calls stop, not while one runs, and once per burst.
func TestTrimAfterTheLastCall(t *testing.T) {
	freed := make(chan struct{}, 10)
	tr := newTrimmerWith(10*time.Millisecond, func() { freed <- struct{}{} })
	tr.begin()
	tr.begin()
	tr.end()
	select {
	case <-freed:
		t.Fatal("trimmed while a call was still running")
	case <-time.After(100 * time.Millisecond):
	}
	tr.end()
	select {
	case <-freed:
	case <-time.After(5 * time.Second):
		t.Fatal("no trim after the last call ended")
	}
	select {
	case <-freed:
		t.Fatal("trimmed twice for one burst")
	case <-time.After(100 * time.Millisecond):
	}
}
