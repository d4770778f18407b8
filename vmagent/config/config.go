// Package config loads vmagent's configuration: defaults < file < flags,
// merged and validated in one place. hostctl writes the file and the TLS
// material at install time; the agent's identity never comes from flags.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/agentspec"
)

// DefaultPath is where the packaged unit points --config.
const DefaultPath = "/etc/meshvm/vmagent.yaml"

// DefaultPort is the agent's fixed default port.
const DefaultPort = agentspec.Port

// Config is version 1 of vmagent.yaml.
type Config struct {
	Version int `json:"version"`
	// Listen is host:port; ":7443" listens on every address.
	Listen string `json:"listen"`
	// Root stands for "/" of the managed machine; tests use a sandbox.
	Root string `json:"root"`
	// AgentPath is this binary's installed path, which the sidecar unit calls.
	AgentPath string `json:"agent_path"`
	TLS       TLS    `json:"tls"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
	Limits   Limits `json:"limits"`
}

// Limits bound what callers can make the agent hold, summed over all of
// them: connections before and after the handshake, streams, the bytes a
// stream may buffer, and the calls that hold a process or a slot for long.
// SECURITY.md's table says what happens beyond each.
type Limits struct {
	// MaxHandshakes is how many connections may be in their TLS handshake
	// at once; one more pushes out the oldest (an anonymous flood holds
	// no more than this).
	MaxHandshakes int `json:"max_handshakes"`
	// HandshakeTimeout closes a connection that has not finished its TLS
	// and HTTP/2 handshake in time.
	HandshakeTimeout Duration `json:"handshake_timeout"`
	// MaxConnections is how many authenticated connections may be open;
	// one more closes the one idle longest, or is refused at accept when
	// every connection has a call running.
	MaxConnections int `json:"max_connections"`
	// FirstCallTimeout closes an authenticated connection that has made no
	// call so long after its handshake.
	FirstCallTimeout Duration `json:"first_call_timeout"`
	// ConnectionIdleTimeout closes a connection with no call for so long.
	ConnectionIdleTimeout Duration `json:"connection_idle_timeout"`
	// StreamsPerConnection caps concurrent calls on one connection (more
	// wait in the client).
	StreamsPerConnection uint32 `json:"streams_per_connection"`
	// MaxStreams caps concurrent calls over all connections; one more is
	// refused (RESOURCE_EXHAUSTED) before its bytes are buffered.
	MaxStreams int `json:"max_streams"`
	// RequestTimeout cancels a call whose request has not fully arrived
	// so long after it began (a half-sent message holds its buffer).
	RequestTimeout Duration `json:"request_timeout"`
	// MaxDeliveries is how many files may stream in at once; one more is
	// refused (RESOURCE_EXHAUSTED) until one finishes.
	MaxDeliveries int `json:"max_deliveries"`
	// DeliveryIdleTimeout cancels a delivery that has not sent 64 KiB of
	// new data in so long: a trickle cannot hold a slot.
	DeliveryIdleTimeout Duration `json:"delivery_idle_timeout"`
	// MaxLogStreams is how many SidecarLogs calls may run at once (each
	// journal stream runs a journalctl).
	MaxLogStreams int `json:"max_log_streams"`
	// LogSendTimeout drops a log stream whose caller takes no lines for so long.
	LogSendTimeout Duration `json:"log_send_timeout"`
	// MaxProcessCalls is how many calls that run programs (Install,
	// Uninstall, CheckNetwork) may run at once.
	MaxProcessCalls int `json:"max_process_calls"`
	// MaxWatchStreams is how many Watch calls may be open at once: one per
	// controller replica that holds this VM, with room for a handover.
	MaxWatchStreams int `json:"max_watch_streams"`
	// WatchSendTimeout drops a watch stream whose caller takes no message
	// for so long (it gets the newest state, never a backlog, meanwhile).
	WatchSendTimeout Duration `json:"watch_send_timeout"`
}

// Duration is a time.Duration written as "30s" or "5m".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration %s: want a string such as \"30s\" or \"5m\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: want a number with a unit such as \"30s\" or \"5m\"", s)
	}
	*d = Duration(v)
	return nil
}

// TLS names the PEM files of the agent's identity and the pinned client CA.
type TLS struct {
	Cert     string `json:"cert"`
	Key      string `json:"key"`
	ClientCA string `json:"client_ca"`
}

// Default returns the built-in configuration.
func Default() Config {
	return Config{
		Version:   1,
		Listen:    fmt.Sprintf(":%d", DefaultPort),
		Root:      "/",
		AgentPath: "/usr/local/bin/vmagent",
		TLS: TLS{
			Cert:     "/etc/meshvm/agent/server.pem",
			Key:      "/etc/meshvm/agent/server-key.pem",
			ClientCA: "/etc/meshvm/agent/client-ca.pem",
		},
		LogLevel: "info",
		Limits: Limits{
			MaxHandshakes:         32,
			HandshakeTimeout:      Duration(5 * time.Second),
			MaxConnections:        64,
			FirstCallTimeout:      Duration(15 * time.Second),
			ConnectionIdleTimeout: Duration(2 * time.Minute),
			StreamsPerConnection:  8,
			MaxStreams:            32,
			RequestTimeout:        Duration(10 * time.Second),
			MaxDeliveries:         4,
			DeliveryIdleTimeout:   Duration(30 * time.Second),
			MaxLogStreams:         4,
			LogSendTimeout:        Duration(30 * time.Second),
			MaxProcessCalls:       2,
			MaxWatchStreams:       4,
			WatchSendTimeout:      Duration(30 * time.Second),
		},
	}
}

// Overrides are flag values; empty fields leave the file's value.
type Overrides struct {
	Listen, Root, LogLevel string
}

// Load reads path over the defaults (a missing file at the default path is
// fine; a missing file named explicitly is not) and applies flags.
func Load(path string, explicit bool, o Overrides) (Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !explicit:
	case err != nil:
		return Config{}, fmt.Errorf("read config: %w", err)
	default:
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return Config{}, fmt.Errorf("config %s: %w: fix the file (see packaging/vmagent.yaml for every field)", path, err)
		}
	}
	if o.Listen != "" {
		c.Listen = o.Listen
	}
	if o.Root != "" {
		c.Root = o.Root
	}
	if o.LogLevel != "" {
		c.LogLevel = o.LogLevel
	}
	return c, c.validate(path)
}

func (c Config) validate(path string) error {
	if c.Version != 1 {
		return fmt.Errorf("config %s: version %d is not supported: this agent reads version 1", path, c.Version)
	}
	// Host and port as net.Listen takes them: an IP (v6 in brackets), a
	// name, or none; a number or a service name.
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("config: listen %q: %w: want host:port such as \":%d\" or \"[::1]:%d\"", c.Listen, err, DefaultPort, DefaultPort)
	}
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("config: root %q must be an absolute path", c.Root)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return c.Limits.validate()
}

func (l Limits) validate() error {
	d := Default().Limits
	counts := []struct {
		name      string
		v, lo, hi int
		def       int
	}{
		{"max_handshakes", l.MaxHandshakes, 1, 1024, d.MaxHandshakes},
		{"max_connections", l.MaxConnections, 1, 1024, d.MaxConnections},
		{"streams_per_connection", int(l.StreamsPerConnection), 1, 100, int(d.StreamsPerConnection)},
		{"max_streams", l.MaxStreams, 1, 256, d.MaxStreams},
		{"max_deliveries", l.MaxDeliveries, 1, 64, d.MaxDeliveries},
		{"max_log_streams", l.MaxLogStreams, 1, 64, d.MaxLogStreams},
		{"max_process_calls", l.MaxProcessCalls, 1, 64, d.MaxProcessCalls},
		{"max_watch_streams", l.MaxWatchStreams, 1, 64, d.MaxWatchStreams},
	}
	for _, c := range counts {
		if c.v < c.lo || c.v > c.hi {
			return fmt.Errorf("config: limits.%s %d: want %d to %d (default %d)", c.name, c.v, c.lo, c.hi, c.def)
		}
	}
	durations := []struct {
		name   string
		v, def Duration
	}{
		{"handshake_timeout", l.HandshakeTimeout, d.HandshakeTimeout},
		{"first_call_timeout", l.FirstCallTimeout, d.FirstCallTimeout},
		{"connection_idle_timeout", l.ConnectionIdleTimeout, d.ConnectionIdleTimeout},
		{"request_timeout", l.RequestTimeout, d.RequestTimeout},
		{"delivery_idle_timeout", l.DeliveryIdleTimeout, d.DeliveryIdleTimeout},
		{"log_send_timeout", l.LogSendTimeout, d.LogSendTimeout},
		{"watch_send_timeout", l.WatchSendTimeout, d.WatchSendTimeout},
	}
	for _, c := range durations {
		if c.v < Duration(time.Second) {
			return fmt.Errorf("config: limits.%s %s: want at least 1s (default %s)", c.name, time.Duration(c.v), time.Duration(c.def))
		}
	}
	if held := l.MaxDeliveries + l.MaxLogStreams + l.MaxProcessCalls + l.MaxWatchStreams; held > l.MaxStreams {
		return fmt.Errorf("config: limits.max_deliveries + max_log_streams + max_process_calls + max_watch_streams (%d) exceed limits.max_streams %d: raise max_streams or lower the others",
			held, l.MaxStreams)
	}
	return nil
}

// ReadTLS reads the three PEM files; each error names the file and the fix.
func (c Config) ReadTLS() (cert, key, clientCA []byte, err error) {
	read := func(what, p string) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		if b, err = os.ReadFile(p); err != nil {
			err = fmt.Errorf("agent %s: %w: run \"hostctl vm onboard\" to (re)install the agent's certificates", what, err)
		}
		return b
	}
	cert = read("certificate", c.TLS.Cert)
	key = read("private key", c.TLS.Key)
	clientCA = read("client CA", c.TLS.ClientCA)
	return cert, key, clientCA, err
}
