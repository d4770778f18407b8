// Package report writes what a command reports as JSON or YAML, the same
// fields either way, for hostctl's reports and vmagent's doctor alike.
package report

import (
	"encoding/json"
	"io"

	"sigs.k8s.io/yaml"
)

// Encode writes v as json or yaml (indented JSON; YAML from the same JSON
// field names); ok is false for any other format, which the caller prints.
func Encode(w io.Writer, format string, v any) (ok bool, err error) {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return true, enc.Encode(v)
	case "yaml":
		out, err := yaml.Marshal(v)
		if err != nil {
			return true, err
		}
		_, err = w.Write(out)
		return true, err
	}
	return false, nil
}
