-- An emergency room or inpatient visit within 2 years of an outpatient visit: acute-care use.
-- outcome_concepts: 9203 9201
--
-- Target cohort: every person with an outpatient visit (visit_concept_id 9202) in 2010-2016; the
-- index date is the day after their first such visit (that visit is history, the index date is not).
-- Outcome: an emergency room (9203) or inpatient (9201) visit in the 730 days from the index date, a
-- classic outcome of health-services research (avoidable acute care).
-- The columns a cohort SQL returns, @cdm_schema, and why the outcome is a LEFT JOIN + GROUP BY: see
-- er_visit_within_365_days.sql.
WITH index_visit AS (
    SELECT person_id, MIN(visit_start_date) AS visit_date
    FROM @cdm_schema.visit_occurrence
    WHERE visit_concept_id = 9202
      AND visit_start_date BETWEEN DATE '2010-01-01' AND DATE '2016-12-31'
    GROUP BY person_id
)
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 730 AS cohort_end_date,
       MIN(acute.visit_start_date) AS outcome_date
FROM index_visit
LEFT JOIN @cdm_schema.visit_occurrence AS acute
       ON acute.person_id = index_visit.person_id
      AND acute.visit_concept_id IN (9203, 9201)
      AND acute.visit_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 730
GROUP BY index_visit.person_id, index_visit.visit_date
