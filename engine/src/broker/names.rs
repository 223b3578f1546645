//! Topic name rules, as Kafka's `Topic.validate`.

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Why a topic name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// Empty.
    #[error("topic name is empty")]
    Empty,
    /// `.` or `..`.
    #[error("topic name cannot be \".\" or \"..\"")]
    Dots,
    /// Too long.
    #[error("topic name is {0} characters long; the limit is {TOPIC_NAME_BYTES_MAX}")]
    TooLong(usize),
    /// A character outside `[a-zA-Z0-9._-]`.
    #[error("topic name {0:?} has characters other than ASCII letters, digits, '.', '_' and '-'")]
    BadCharacter(String),
    /// Same as an existing topic once `.` and `_` are treated alike (their metric names collide).
    #[error("topic name {name:?} collides with existing topic {existing:?} ('.' and '_' collide)")]
    Collides {
        /// The name asked for.
        name: String,
        /// The existing topic.
        existing: String,
    },
}

/// Checks a topic name's length and characters.
///
/// # Errors
/// [`TopicNameError`] naming the rule broken.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Dots);
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(TopicNameError::TooLong(name.len()));
    }
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    if !name.bytes().all(allowed) {
        return Err(TopicNameError::BadCharacter(name.to_owned()));
    }
    Ok(())
}

/// The name with `.` replaced by `_`: two topics with the same collision key cannot coexist.
pub fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

/// Whether Kafka treats the topic as internal (`__consumer_offsets`, `__transaction_state`).
pub fn is_internal(name: &str) -> bool {
    name == "__consumer_offsets" || name == "__transaction_state"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        assert_eq!(validate_topic_name(".."), Err(TopicNameError::Dots));
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert_eq!(
            validate_topic_name(&"a".repeat(250)),
            Err(TopicNameError::TooLong(250))
        );
        assert!(matches!(
            validate_topic_name("a/b"),
            Err(TopicNameError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_topic_name("é"),
            Err(TopicNameError::BadCharacter(_))
        ));
        assert_eq!(collision_key("a.b_c"), collision_key("a_b.c"));
    }
}
