//! Step assertions: CEL expressions over what a run measured, e.g.
//! `probes_failed == 0 && duration_seconds < 120`.

use cel::{Context, Program, Value};

/// The variables an assertion can read.
pub const VARIABLES: [&str; 7] = [
    "resilience_score",
    "expected_resilience_score",
    "faults_passed",
    "faults_failed",
    "probes_passed",
    "probes_failed",
    "duration_seconds",
];

/// What a run measured, as the assertion sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measures {
    /// The run's resilience score.
    pub resilience_score: f64,
    /// The step's expected score.
    pub expected_resilience_score: f64,
    /// Faults whose probes all passed.
    pub faults_passed: u32,
    /// Faults with a failed probe or an error.
    pub faults_failed: u32,
    /// Probes that passed.
    pub probes_passed: u32,
    /// Probes that failed.
    pub probes_failed: u32,
    /// Run time in seconds.
    pub duration_seconds: f64,
}

/// Why an assertion could not give a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The expression does not parse.
    #[error("assertion '{expression}' does not compile: {message}")]
    Compile {
        /// The expression.
        expression: String,
        /// The parser's message.
        message: String,
    },
    /// Evaluation failed (unknown variable, bad operands, ...).
    #[error("assertion '{expression}' failed to evaluate: {message}")]
    Evaluate {
        /// The expression.
        expression: String,
        /// What went wrong.
        message: String,
    },
    /// The expression evaluated to something other than a boolean.
    #[error("assertion '{expression}' must evaluate to a boolean, but gave {value}")]
    NotBoolean {
        /// The expression.
        expression: String,
        /// What it gave.
        value: String,
    },
}

/// Compiles `expression` and checks it only reads known variables.
pub fn compile(expression: &str) -> Result<Program, AssertionError> {
    let program = Program::compile(expression).map_err(|e| AssertionError::Compile {
        expression: expression.to_string(),
        message: e.to_string().lines().next().unwrap_or_default().to_string(),
    })?;
    let references = program.references();
    if let Some(unknown) = references
        .variables()
        .into_iter()
        .find(|v| !VARIABLES.contains(v))
    {
        return Err(AssertionError::Compile {
            expression: expression.to_string(),
            message: format!(
                "unknown variable '{unknown}' (known: {})",
                VARIABLES.join(", ")
            ),
        });
    }
    Ok(program)
}

/// Evaluates `expression` over `measures`.
pub fn evaluate(expression: &str, measures: &Measures) -> Result<bool, AssertionError> {
    let program = compile(expression)?;
    let evaluate_error = |message: String| AssertionError::Evaluate {
        expression: expression.to_string(),
        message,
    };
    let mut context = Context::default();
    let floats = [
        ("resilience_score", measures.resilience_score),
        (
            "expected_resilience_score",
            measures.expected_resilience_score,
        ),
        ("duration_seconds", measures.duration_seconds),
    ];
    for (name, value) in floats {
        context
            .add_variable(name, value)
            .map_err(|e| evaluate_error(e.to_string()))?;
    }
    let counts = [
        ("faults_passed", measures.faults_passed),
        ("faults_failed", measures.faults_failed),
        ("probes_passed", measures.probes_passed),
        ("probes_failed", measures.probes_failed),
    ];
    for (name, value) in counts {
        context
            .add_variable(name, i64::from(value))
            .map_err(|e| evaluate_error(e.to_string()))?;
    }
    match program.execute(&context) {
        Ok(Value::Bool(result)) => Ok(result),
        Ok(other) => Err(AssertionError::NotBoolean {
            expression: expression.to_string(),
            value: format!("{other:?}"),
        }),
        Err(e) => Err(evaluate_error(format!("{e:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measures() -> Measures {
        Measures {
            resilience_score: 71.43,
            expected_resilience_score: 70.0,
            faults_passed: 2,
            faults_failed: 1,
            probes_passed: 3,
            probes_failed: 1,
            duration_seconds: 42.0,
        }
    }

    #[test]
    fn evaluates_over_the_measures() {
        assert_eq!(evaluate("probes_failed == 0", &measures()), Ok(false));
        assert_eq!(
            evaluate(
                "resilience_score >= expected_resilience_score && faults_passed >= 2",
                &measures()
            ),
            Ok(true)
        );
        assert_eq!(evaluate("duration_seconds < 60.0", &measures()), Ok(true));
    }

    #[test]
    fn refuses_what_is_not_a_verdict() {
        let err = evaluate("resilience_score", &measures()).unwrap_err();
        assert!(
            err.to_string().contains("must evaluate to a boolean"),
            "{err}"
        );
        let err = compile("probes_failed ==").unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
        let err = compile("latency_ms < 300").unwrap_err();
        assert!(
            err.to_string().contains("unknown variable 'latency_ms'"),
            "{err}"
        );
    }
}
