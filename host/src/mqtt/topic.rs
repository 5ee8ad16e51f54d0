//! MQTT topic names and filters as Quiver topics and patterns: levels become tokens
//! (`a/b/c` is `a.b.c`), `+` is `*`, and `#` is `>`, except that MQTT's `a/#` also
//! matches `a` itself, so it becomes two patterns, `a.>` and `a`.
//!
//! Levels must be Quiver tokens (`A-Z a-z 0-9 _ -`, not empty): a name with a space, a
//! dot, an empty level (`a//b`, a leading or trailing `/`) or a leading `$` has no
//! Quiver topic and is refused with the rule it breaks.

use quiver_protocol::{TopicName, TopicPattern};

use super::packet::{Reason, Refusal};

/// A subscription's filter in Quiver's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The filter as the client wrote it (without a `$share/GROUP/` prefix).
    pub mqtt: String,
    /// The patterns whose topics it matches (two for a trailing `#`).
    pub patterns: Vec<TopicPattern>,
}

impl Filter {
    /// Whether `topic` matches the filter.
    pub fn matches(&self, topic: &TopicName) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }
}

/// The Quiver topic an MQTT topic name stands for.
pub fn topic_name(mqtt: &str) -> Result<TopicName, Refusal> {
    let refuse = |why: String| Refusal::new(Reason::TopicNameInvalid, why);
    if mqtt.contains(['+', '#']) {
        return Err(refuse(format!(
            "topic `{mqtt}`: a PUBLISH names one topic; `+` and `#` belong in filters"
        )));
    }
    let name = quiver_name(mqtt).map_err(refuse)?;
    TopicName::parse(&name).map_err(|e| refuse(format!("topic `{mqtt}` ({name}): {e}")))
}

/// The MQTT topic name of a Quiver topic.
pub fn mqtt_name(topic: &str) -> String {
    topic.replace('.', "/")
}

/// A subscription filter in Quiver's terms.
pub fn filter(mqtt: &str) -> Result<Filter, Refusal> {
    let refuse = |why: String| Refusal::new(Reason::TopicFilterInvalid, why);
    let (head, rest) = match mqtt.strip_suffix("/#") {
        Some(head) => (Some(head), true),
        None if mqtt == "#" => (None, true),
        None => (Some(mqtt), false),
    };
    let Some(head) = head else {
        return Ok(Filter {
            mqtt: mqtt.to_owned(),
            patterns: vec![TopicPattern::every()],
        });
    };
    if head.contains('#') {
        return Err(refuse(format!(
            "filter `{mqtt}`: `#` must be the last level, alone"
        )));
    }
    let base = quiver_name(head).map_err(refuse)?;
    let parse = |pattern: &str| {
        TopicPattern::parse(pattern)
            .map_err(|e| refuse(format!("filter `{mqtt}` ({pattern}): {e}")))
    };
    let mut patterns = Vec::with_capacity(2);
    if rest {
        patterns.push(parse(&format!("{base}.>"))?);
    }
    patterns.push(parse(&base)?);
    Ok(Filter {
        mqtt: mqtt.to_owned(),
        patterns,
    })
}

/// Levels to tokens, `+` to `*`; refuses what no Quiver name can hold.
fn quiver_name(mqtt: &str) -> Result<String, String> {
    if mqtt.is_empty() {
        return Err("an empty topic".into());
    }
    if mqtt.starts_with('$') {
        return Err(format!(
            "`{mqtt}`: topics starting with `$` are reserved and have no Quiver topic"
        ));
    }
    let mut name = String::with_capacity(mqtt.len());
    for (i, level) in mqtt.split('/').enumerate() {
        if i > 0 {
            name.push('.');
        }
        match level {
            "" => {
                return Err(format!(
                    "`{mqtt}`: level {} is empty, and a Quiver topic has no empty token",
                    i + 1
                ));
            }
            "+" => name.push('*'),
            _ if level.contains('+') => {
                return Err(format!("`{mqtt}`: `+` must be a whole level"));
            }
            _ if level.contains('.') => {
                return Err(format!(
                    "`{mqtt}`: level `{level}` holds a `.`, which separates Quiver's tokens"
                ));
            }
            _ => name.push_str(level),
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    #[test]
    fn names_map_level_by_level() {
        assert_eq!(
            topic_name("sensors/room1/temp").unwrap().as_str(),
            "sensors.room1.temp"
        );
        assert_eq!(mqtt_name("sensors.room1.temp"), "sensors/room1/temp");
        for bad in [
            "a//b", "/a", "a/", "a b", "a.b/c", "$SYS/x", "a/+", "a/#", "",
        ] {
            let refusal = topic_name(bad).unwrap_err();
            assert_eq!(refusal.reason, Reason::TopicNameInvalid, "{bad}");
        }
    }

    #[test]
    fn wildcards_map_and_a_trailing_hash_matches_its_parent() {
        let f = filter("a/#").unwrap();
        assert!(f.matches(&name("a")) && f.matches(&name("a.b")) && f.matches(&name("a.b.c")));
        assert!(!f.matches(&name("b")));
        let f = filter("#").unwrap();
        assert!(f.matches(&name("x")) && f.matches(&name("x.y")));
        let f = filter("a/+/c").unwrap();
        assert!(
            f.matches(&name("a.b.c")) && !f.matches(&name("a.b.d")) && !f.matches(&name("a.c"))
        );
        let f = filter("+/+/#").unwrap();
        assert!(f.matches(&name("a.b")) && f.matches(&name("a.b.c")) && !f.matches(&name("a")));
        for bad in ["a/#/b", "a#", "a/b+", "a//b", "$SYS/#"] {
            assert_eq!(
                filter(bad).unwrap_err().reason,
                Reason::TopicFilterInvalid,
                "{bad}"
            );
        }
    }
}
