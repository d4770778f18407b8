package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLimitsLoadAndValidate(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (Config, error) {
		p := filepath.Join(dir, "vmagent.yaml")
		if err := os.WriteFile(p, []byte("version: 1\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
		return Load(p, true, Overrides{})
	}
	c, err := load("limits:\n  max_deliveries: 2\n  delivery_idle_timeout: 45s\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxDeliveries != 2 || time.Duration(c.Limits.DeliveryIdleTimeout) != 45*time.Second ||
		c.Limits.StreamsPerConnection != Default().Limits.StreamsPerConnection {
		t.Errorf("got %+v, want max_deliveries 2, idle 45s and the other defaults", c.Limits)
	}
	for body, want := range map[string]string{
		"limits:\n  max_deliveries: 0\n":             "limits.max_deliveries 0: want 1 to 64",
		"limits:\n  streams_per_connection: 5000\n":  "limits.streams_per_connection 5000",
		"limits:\n  delivery_idle_timeout: 10ms\n":   "limits.delivery_idle_timeout 10ms: want at least 1s",
		"limits:\n  connection_idle_timeout: soon\n": `duration "soon"`,
		"limits:\n  delivery_idle_timeout: 30\n":     `want a string such as "30s"`,
		"limits:\n  max_handshakes: 0\n":             "limits.max_handshakes 0: want 1 to 1024 (default 32)",
		"limits:\n  max_streams: 300\n":              "limits.max_streams 300: want 1 to 256",
		"limits:\n  handshake_timeout: 0s\n":         "limits.handshake_timeout 0s: want at least 1s (default 5s)",
		"limits:\n  first_call_timeout: 500ms\n":     "limits.first_call_timeout 500ms",
		"limits:\n  request_timeout: 1ms\n":          "limits.request_timeout 1ms",
		"limits:\n  log_send_timeout: 1ms\n":         "limits.log_send_timeout 1ms",
		"limits:\n  max_log_streams: 65\n":           "limits.max_log_streams 65",
		"limits:\n  max_process_calls: 0\n":          "limits.max_process_calls 0",
		"limits:\n  max_connections: 2000\n":         "limits.max_connections 2000",
		"limits:\n  max_streams: 8\n":                "exceed limits.max_streams 8",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error containing %q", body, err, want)
		}
	}
}
