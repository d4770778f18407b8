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

// Limits bound what an authenticated caller can make the agent hold.
type Limits struct {
	// MaxDeliveries is how many files may stream in at once; one more is
	// refused (RESOURCE_EXHAUSTED) until one finishes.
	MaxDeliveries int `json:"max_deliveries"`
	// StreamsPerConnection caps concurrent calls on one connection.
	StreamsPerConnection uint32 `json:"streams_per_connection"`
	// DeliveryIdleTimeout cancels a delivery that sends nothing for so long.
	DeliveryIdleTimeout Duration `json:"delivery_idle_timeout"`
	// ConnectionIdleTimeout closes a connection with no call for so long.
	ConnectionIdleTimeout Duration `json:"connection_idle_timeout"`
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
			MaxDeliveries:         4,
			StreamsPerConnection:  16,
			DeliveryIdleTimeout:   Duration(30 * time.Second),
			ConnectionIdleTimeout: Duration(5 * time.Minute),
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
	switch {
	case l.MaxDeliveries < 1 || l.MaxDeliveries > 64:
		return fmt.Errorf("config: limits.max_deliveries %d: want 1 to 64 (default %d)", l.MaxDeliveries, d.MaxDeliveries)
	case l.StreamsPerConnection < 1 || l.StreamsPerConnection > 1000:
		return fmt.Errorf("config: limits.streams_per_connection %d: want 1 to 1000 (default %d)", l.StreamsPerConnection, d.StreamsPerConnection)
	case l.DeliveryIdleTimeout < Duration(time.Second):
		return fmt.Errorf("config: limits.delivery_idle_timeout %s: want at least 1s (default %s)", time.Duration(l.DeliveryIdleTimeout), time.Duration(d.DeliveryIdleTimeout))
	case l.ConnectionIdleTimeout < Duration(time.Second):
		return fmt.Errorf("config: limits.connection_idle_timeout %s: want at least 1s (default %s)", time.Duration(l.ConnectionIdleTimeout), time.Duration(d.ConnectionIdleTimeout))
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
