package agentwatch

import (
	"testing"
	"time"
)

// Waits spread over [d/2, 3d/2], both halves used: reconnects after a
// failover do not land together.
func TestJitterSpreadsWaits(t *testing.T) {
	d := time.Second
	var below, above int
	for range 1000 {
		j := jitter(d)
		if j < d/2 || j > d+d/2 {
			t.Fatalf("jitter(%s) = %s, outside [%s, %s]", d, j, d/2, d+d/2)
		}
		if j < d {
			below++
		} else {
			above++
		}
	}
	if below < 300 || above < 300 {
		t.Errorf("waits not spread: %d below %s, %d above", below, d, above)
	}
}
